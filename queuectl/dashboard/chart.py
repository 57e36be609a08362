"""The throughput chart's geometry: polylines and axis ticks that the template draws as SVG."""

from __future__ import annotations

from dataclasses import dataclass

from .overview import Minute

WIDTH, HEIGHT = 720, 200
#: Room for the axis labels: left, right, top, bottom.
LEFT, RIGHT, TOP, BOTTOM = 40, 10, 10, 24


@dataclass(frozen=True)
class Chart:
    """What the SVG draws: the two lines, the top of the y axis, the labelled x ticks."""

    completed: str  # SVG points "x,y x,y ..."
    failures: str
    y_max: int
    x_ticks: list[tuple[float, str]]  # (x, label "-45m")
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    top: int = TOP
    bottom: int = HEIGHT - BOTTOM
    right: int = WIDTH - RIGHT


def nice_ceiling(value: int) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50 ... that is at least `value` (at least 1)."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if step * factor >= value:
                return step * factor
        step *= 10


def chart(minutes: list[Minute]) -> Chart:
    """The chart of `minutes` (oldest first, one per minute, the last being now)."""
    y_max = nice_ceiling(max((max(m.completed, m.failures) for m in minutes), default=0))
    span = max(len(minutes) - 1, 1)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(i: int) -> float:
        return round(LEFT + plot_w * i / span, 1)

    def line(values: list[int]) -> str:
        return " ".join(f"{x(i)},{round(TOP + plot_h * (1 - v / y_max), 1)}" for i, v in enumerate(values))

    ticks = [(x(i), f"-{len(minutes) - 1 - i}m" if i < len(minutes) - 1 else "now")
             for i in range(len(minutes)) if (len(minutes) - 1 - i) % 15 == 0]
    return Chart(line([m.completed for m in minutes]), line([m.failures for m in minutes]), y_max, ticks)
