"""The egress guard: which addresses the reconciler may connect to (SMTP relays, OAuth
token, test and revoke endpoints).

Why it exists: a resource author controls ``spec.host`` and the provider's endpoints.
Without a guard, an operator running in a cloud could be pointed at the instance metadata
service or at any internal service and made to report what it answers, or to send it
credentials (a server-side request forgery).  The policy is reconciler configuration,
never resource content, and it is checked *after* DNS resolution, on the exact address
that is then connected to (no second lookup an attacker's DNS could answer differently).

Rules, in order: an address inside an ``allow`` network is permitted; then an address
inside a ``deny`` network is refused; then loopback is permitted only when
``allow_loopback``; then an unspecified address (0.0.0.0, ::) or a multicast address is
refused; everything else is permitted.

IPv6 forms that carry an IPv4 address are judged as that IPv4 address, by every rule
(allow, loopback, deny): IPv4-mapped ``::ffff:a.b.c.d``, NAT64 ``64:ff9b::a.b.c.d`` and
``64:ff9b:1::/48``, 6to4 ``2002:aabb:ccdd::``.  IPv4-compatible addresses (``::a.b.c.d``,
deprecated since 2006) and Teredo (``2001::/32``) are refused outright: no relay lives
there, and the kernel may route them to the embedded IPv4.

The default deny list (:data:`DEFAULT_DENY`) holds link-local ranges and every cloud
metadata address we know (AWS, GCP, Azure, Oracle, Alibaba, OpenStack, DigitalOcean,
Hetzner use 169.254.169.254; Azure's wireserver 168.63.129.16; Alibaba 100.100.100.200;
AWS IPv6 fd00:ec2::254; GCP IPv6 fd20:ce::254).  Operators add networks with
``--deny-egress`` and exempt them with ``--allow-egress``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_DENY: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("169.254.0.0/16"),  # IPv4 link-local: 169.254.169.254 metadata
    ipaddress.ip_network("168.63.129.16/32"),  # Azure wireserver / IMDS relay
    ipaddress.ip_network("100.100.100.200/32"),  # Alibaba Cloud metadata
    ipaddress.ip_network("fe80::/10"),  # IPv6 link-local
    ipaddress.ip_network("fd00:ec2::254/128"),  # AWS IMDS over IPv6
    ipaddress.ip_network("fd20:ce::254/128"),  # GCP metadata over IPv6
)
_V4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_TEREDO = ipaddress.IPv6Network("2001::/32")
_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))


@dataclass(frozen=True, slots=True)
class EgressPolicy:
    """Where the probe may connect.  The default suits local mode (loopback allowed)."""

    allow_loopback: bool = True
    deny: tuple[IPNetwork, ...] = DEFAULT_DENY
    allow: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_strings(
        cls, *, allow_loopback: bool = True, deny: Iterable[str] = (),
        allow: Iterable[str] = (), keep_default_deny: bool = True,
    ) -> EgressPolicy:
        """Build a policy from CIDR strings (operator flags, config files).

        ``deny`` entries are added to the default deny list unless
        ``keep_default_deny`` is false.  Raises ``ValueError`` on a malformed network.
        """
        extra = tuple(ipaddress.ip_network(d, strict=False) for d in deny)
        return cls(
            allow_loopback=allow_loopback,
            deny=(DEFAULT_DENY if keep_default_deny else ()) + extra,
            allow=tuple(ipaddress.ip_network(a, strict=False) for a in allow),
        )

    def permits(self, address: str | IPAddress) -> bool:
        return self.refusal(address) is None

    def refusal(self, address: str | IPAddress) -> str | None:
        """Why ``address`` is refused (a short phrase), or ``None`` when it is permitted."""
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
        if isinstance(ip, ipaddress.IPv6Address):
            if ip.scope_id:  # "fe80::1%eth0": judge the address without its zone
                ip = ipaddress.IPv6Address(str(ip).split("%", 1)[0])
            if any(ip in net for net in self.allow if net.version == 6):
                return None
            embedded = _embedded_ipv4(ip)
            if embedded is not None:
                why = self.refusal(embedded)
                return None if why is None else f"{why} (it carries the IPv4 {embedded})"
            if ip in _V4_COMPATIBLE and not ip.is_loopback and not ip.is_unspecified:
                return "IPv4-compatible IPv6 addresses (::a.b.c.d) are not relays"
            if ip in _TEREDO:
                return "Teredo addresses (2001::/32) are not relays"
        if any(ip in net for net in self.allow if net.version == ip.version):
            return None
        if any(ip in net for net in self.deny if net.version == ip.version):
            return "the address is in the egress deny list (link-local / cloud metadata)"
        if ip.is_loopback:
            return None if self.allow_loopback else "loopback addresses are not allowed"
        if ip.is_unspecified:
            return "the unspecified address is not a relay"
        if ip.is_multicast:
            return "multicast addresses are not relays"
        return None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv4-mapped, NAT64 or 6to4 address carries."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if any(ip in net for net in _NAT64):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour
