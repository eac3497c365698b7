"""A simulated network for the HTTP pool: named hosts served from loopback, and a DNS
whose answers change.

``Network`` is an httpcore network backend, what ``LargeReadBackend`` connects through
(``RegistryClient.open(network=...)``, ``open_client(network=...)``): each address and
port routed to it leads to a fixture server on 127.0.0.1, so a test can have a
"public" registry at 93.184.216.34 and a "metadata service" at 169.254.169.254 on one
machine, each with its own recorded requests. Asked to connect to a host name, it looks
the name up in ``dns`` first, as the system's stack does (httpcore's trio backend calls
getaddrinfo), and takes the first address. ``connects`` lists the address and port of
every connection it made or tried.

``DNS`` answers each name from a list of answers in turn, the last one repeating: a name
public on its first lookup and internal on its second is DNS rebinding. It is also a
``Resolver`` (``stages/_http.py``), so the one table answers the client's address checks
and the network's connects, and ``lookups`` shows how many times each name was asked.

The TLS certificates name the hosts, never the addresses: a handshake verifies only if
the client asked for the host name (SNI and the certificate check).
"""

from __future__ import annotations

import collections
import ipaddress
from collections.abc import Iterable, Mapping, Sequence

import httpcore
import trio

__all__ = ["DNS", "Network"]


class DNS:
    """Host name -> the answers it gives, one per lookup, the last repeating (an empty
    answer: the name does not resolve)."""

    def __init__(self, answers: Mapping[str, Sequence[Sequence[str]]]) -> None:
        self._answers = {name: [list(answer) for answer in seq] for name, seq in answers.items()}
        self.lookups: collections.Counter[str] = collections.Counter()

    async def __call__(self, host: str) -> list[str]:
        await trio.lowlevel.checkpoint()
        self.lookups[host] += 1
        answers = self._answers.get(host, [[]])
        return answers.pop(0) if len(answers) > 1 else list(answers[0])


class Network(httpcore.AsyncNetworkBackend):
    """Addresses routed to loopback ports, names looked up in ``dns``; see the module."""

    def __init__(self, dns: DNS) -> None:
        self.dns = dns
        self.connects: list[tuple[str, int]] = []
        self._routes: dict[tuple[str, int], int] = {}
        self._loopback = httpcore.TrioBackend()

    def route(self, address: str, port: int, local_port: int) -> None:
        """Connections to ``address`` ``port`` reach 127.0.0.1 ``local_port``."""
        self._routes[(str(ipaddress.ip_address(address)), port)] = local_port

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        address = host
        try:
            ipaddress.ip_address(host)
        except ValueError:  # a name: looked up here, as the system's stack would
            answer = await self.dns(host)
            if not answer:
                raise httpcore.ConnectError(f"{host} does not resolve") from None
            address = answer[0]
        self.connects.append((address, port))
        local_port = self._routes.get((address, port))
        if local_port is None:
            raise httpcore.ConnectError(f"no route to {address} port {port}")
        return await self._loopback.connect_tcp(
            "127.0.0.1", local_port, timeout, local_address, socket_options
        )

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("no unix sockets on the simulated network")

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)

    def connected_to(self, address: str) -> bool:
        return any(a == address for a, _ in self.connects)
