// The relay rule: Tern is never an open relay. A recipient is accepted when
// the client is trusted (its address is in a trusted network, or it is a local
// submission) or when the recipient's domain is one Tern relays for.
// Pure; consulted by the session machine at RCPT.

public struct RelayPolicy: Sendable, Equatable {
    /// Lower-case A-label domains; an entry starting with "." matches subdomains.
    public var relayDomains: [String]
    public var trustedNetworks: [IPNetwork]

    public init(relayDomains: [String] = [], trustedNetworks: [IPNetwork] = IPNetwork.loopback) {
        self.relayDomains = relayDomains.map { d in
            let lead = d.hasPrefix(".") ? "." : ""
            return lead + (IDNA.toASCII(String(d.drop(while: { $0 == "." }))) ?? d.lowercased())
        }
        self.trustedNetworks = trustedNetworks
    }

    public func isTrusted(_ address: IPAddress?) -> Bool {
        guard let a = address else { return false }
        return trustedNetworks.contains { $0.contains(a) }
    }

    public func isRelayDomain(_ normalizedDomain: String) -> Bool {
        relayDomains.contains { entry in
            entry.hasPrefix(".") ? normalizedDomain.hasSuffix(entry) : normalizedDomain == entry
        }
    }

    /// nil when the recipient may be accepted, else the refusal.
    public func check(_ mailbox: Mailbox, clientTrusted: Bool) -> SMTPReply? {
        if clientTrusted { return nil }
        let denied = SMTPReply(554, .securityPolicy, "<\(mailbox.address)>: Relay access denied")
        if mailbox.isAddressLiteral { return denied }
        guard isRelayDomain(mailbox.normalizedDomain) else { return denied }
        // Sender-specified routing inside the local part (user%host@relay,
        // host!user@relay, "user@host"@relay) would let the next hop forward
        // elsewhere; Postfix refuses it from untrusted clients too
        // (allow_untrusted_routing = no).
        let local = mailbox.unquotedLocalPart
        if local.contains("%") || local.contains("!") || local.contains("@") {
            return SMTPReply(554, .securityPolicy, "<\(mailbox.address)>: Sender-specified routing is not allowed")
        }
        return nil
    }
}
