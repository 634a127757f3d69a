"""Who may ask `GET /proxy/queue/{id}` about a ticket.

A ticket's id in the scheduler is the request's X-Request-Id, which the client may choose — so
anyone could guess a predictable one and read another client's position, model and score. Each
ticket therefore also gets an id of the sidecar's own, unguessable (128 random bits), returned as
`X-Queue-Id`: holding it is the capability. The request id itself still works, but only for the
client identity that owns the ticket (or an admin); that check is the route's, this keeps owners.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class QueueTicket:
    queue_id: str
    request_id: str
    client: str  # the owner's client identity, as the scheduler knows it


class QueueIds:
    """Queue ids of the requests in progress; single-threaded (the event loop's), like the scheduler."""

    def __init__(self) -> None:
        self._by_queue: dict[str, QueueTicket] = {}
        self._by_request: dict[str, QueueTicket] = {}

    def issue(self, request_id: str, client: str) -> QueueTicket | None:
        """A new queue id for `request_id`, or None when that request id is already in progress
        (the duplicate is refused; its queue id must not lead to the other request's ticket)."""
        if request_id in self._by_request:
            return None
        ticket = QueueTicket(secrets.token_urlsafe(16), request_id, client)
        self._by_queue[ticket.queue_id] = ticket
        self._by_request[request_id] = ticket
        return ticket

    def release(self, ticket: QueueTicket) -> None:
        self._by_queue.pop(ticket.queue_id, None)
        if self._by_request.get(ticket.request_id) is ticket:
            del self._by_request[ticket.request_id]

    def by_queue_id(self, queue_id: str) -> QueueTicket | None:
        return self._by_queue.get(queue_id)

    def by_request_id(self, request_id: str) -> QueueTicket | None:
        return self._by_request.get(request_id)

    def queue_id_of(self, request_id: str) -> str | None:
        ticket = self._by_request.get(request_id)
        return None if ticket is None else ticket.queue_id
