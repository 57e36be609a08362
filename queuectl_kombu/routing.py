"""Routing: exchanges and bindings kept in the file (shared by every process), and which queues
a message published to an exchange with a routing key reaches."""

from __future__ import annotations

from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport.virtual.exchange import TopicExchange

from . import enqueue
from .store import JobStore

#: kombu's topic matching (patterns compiled once per process; it needs no channel).
_TOPIC = TopicExchange(None)


def route(store: JobStore, exchange: str, routing_key: str, default: str | None = None) -> list[str]:
    """The queues a message published to `exchange` with `routing_key` goes to, sorted; the
    anonymous exchange ("") delivers to the queue named by the routing key. An exchange whose
    bindings match nothing goes to `default` if given, else nowhere."""
    if not exchange:
        return [routing_key or default] if (routing_key or default) else []
    kind, bindings = store.routes(exchange)  # no bindings: no queue, whatever the type
    if kind == "fanout":
        queues = {queue for _, queue in bindings}
    elif kind == "topic":
        queues = {queue for rkey, queue in bindings if _TOPIC._match(_TOPIC.key_to_pattern(rkey), routing_key)}
    else:
        queues = {queue for rkey, queue in bindings if rkey == routing_key}
    if not queues and default is not None:
        return [default]
    return sorted(queues)


class Routing:
    """The exchange and binding verbs of a kombu channel, kept in the file (mixed into Channel)."""

    store: JobStore
    exchange_types: dict[str, Any]
    deadletter_queue: str | None
    connection: Any

    def _declared(self) -> None:
        """A declaration inside enqueue_in may be rolled back by the application: its kombu
        connection forgets what it declared when the block ends (enqueue.Loan.declared_by)."""
        if enqueue.current() is not None:
            enqueue.note_declaration(getattr(self.connection, "client", None))

    def exchange_declare(
        self, exchange: str | None = None, type: str = "direct", durable: bool = False,
        auto_delete: bool = False, arguments: dict[str, Any] | None = None, nowait: bool = False,
        passive: bool = False,
    ) -> None:
        """Declare an exchange in the database (passive: fail with 404 if it is missing)."""
        type = type or "direct"
        exchange = exchange or f"amq.{type}"
        if passive:
            if self.store.exchange_type(exchange) is None:
                raise ChannelError(
                    f"NOT_FOUND - no exchange {exchange!r} in vhost {self.store.path!r}",
                    (50, 10), "Channel.exchange_declare", "404",
                )
            return
        if type not in self.exchange_types:
            raise ChannelError(f"exchange type {type!r} is not supported", (50, 10), "Channel.exchange_declare", "503")
        self.store.declare_exchange(exchange, type, durable=durable, auto_delete=auto_delete, arguments=arguments)
        self._declared()

    def exchange_delete(self, exchange: str, if_unused: bool = False, nowait: bool = False) -> None:
        """Delete an exchange and its bindings."""
        self.store.delete_exchange(exchange)

    def queue_bind(
        self, queue: str, exchange: str | None = None, routing_key: str = "",
        arguments: dict[str, Any] | None = None, **kwargs: Any,
    ) -> None:
        """Bind `queue` to `exchange` in the database."""
        self.store.bind(exchange or "amq.direct", queue, routing_key or "", arguments)
        self._declared()

    def queue_unbind(
        self, queue: str, exchange: str | None = None, routing_key: str = "",
        arguments: dict[str, Any] | None = None, **kwargs: Any,
    ) -> None:
        """Remove a binding from the database."""
        self.store.unbind(exchange or "amq.direct", queue, routing_key or "")

    def list_bindings(self) -> Any:
        """Every (queue, exchange, routing_key) binding."""
        return iter(self.store.all_bindings())

    def typeof(self, exchange: str, default: str = "direct") -> Any:
        """The exchange type of a declared exchange (direct when unknown)."""
        return self.exchange_types[self.store.exchange_type(exchange) or default]

    def get_table(self, exchange: str) -> list[tuple[str, Any, str]]:
        """(routing_key, pattern, queue) of the bindings of `exchange`."""
        typ = self.typeof(exchange)
        return [typ.prepare_bind(queue, exchange, rkey, None) for rkey, queue in self.store.bindings_of(exchange)]

    def _lookup(self, exchange: str, routing_key: str, default: str | None = None) -> list[str]:
        """kombu's name for route(): the queues a publish reaches (default: the dead-letter queue)."""
        return route(self.store, exchange, routing_key, self.deadletter_queue if default is None else default)
