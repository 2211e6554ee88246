"""The egress guard: which addresses the reconciler may open an SMTP connection to.

Why it exists: a resource author controls ``spec.host``.  Without a guard, an operator
running in a cloud could be pointed at the instance metadata service (169.254.169.254,
fd00:ec2::254) or at any internal service and made to report what it answers (a
server-side request forgery).  The policy is reconciler configuration, never resource
content, and it is checked *after* DNS resolution, on the exact address that is then
connected to (no second lookup an attacker's DNS could answer differently).

Rules, in order: an address inside an ``allow`` network is permitted; then loopback is
permitted only when ``allow_loopback``; then an address inside a ``deny`` network, an
unspecified address (0.0.0.0, ::) or a multicast address is refused; everything else is
permitted.  IPv4-mapped IPv6 addresses (``::ffff:169.254.169.254``) are judged as the
IPv4 address they carry.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_DENY: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("169.254.0.0/16"),  # IPv4 link-local, cloud metadata services
    ipaddress.ip_network("fe80::/10"),  # IPv6 link-local
    ipaddress.ip_network("fd00:ec2::254/128"),  # AWS IMDS over IPv6
)


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
            if ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
        if any(ip in net for net in self.allow if net.version == ip.version):
            return None
        if ip.is_loopback:
            return None if self.allow_loopback else "loopback addresses are not allowed"
        if any(ip in net for net in self.deny if net.version == ip.version):
            return "the address is in the egress deny list (link-local / cloud metadata)"
        if ip.is_unspecified:
            return "the unspecified address is not a relay"
        if ip.is_multicast:
            return "multicast addresses are not relays"
        return None
