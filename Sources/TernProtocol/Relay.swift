// The relay rule: Tern is never an open relay. A recipient is accepted when
// the client is trusted (its address is in a trusted network, or it is a local
// submission) or when the recipient's domain is one Tern relays for.
// Pure; consulted by the session machine at RCPT.

import Synchronization

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

/// The valid recipients of relay domains (Postfix's relay_recipient_maps):
/// an in-memory copy of the `relay_recipient` and `relay_domain_policy`
/// tables that the listener refreshes, consulted at RCPT so that an unknown
/// recipient gets 550 5.1.1 during the session instead of a bounce to a
/// sender who may be forged (backscatter). Addresses compare in canonical
/// form, case-insensitively.
public final class RecipientTable: Sendable {
    struct Snapshot: Sendable {
        var addresses: Set<String> = []
        /// Domains whose recipients are checked (they have entries or a policy row without catch-all).
        var checked: Set<String> = []
    }

    private let box = Mutex(Snapshot())

    public init() {}

    /// Replaces the whole table. `addresses` in canonical form; `catchAll`
    /// per domain (true: any recipient of it is accepted).
    public func replace(addresses: [String], catchAll: [String: Bool]) {
        var s = Snapshot()
        for a in addresses {
            let key = a.lowercased()
            s.addresses.insert(key)
            if let at = key.lastIndex(of: "@") { s.checked.insert(String(key[key.index(after: at)...])) }
        }
        for (domain, on) in catchAll {
            if on { s.checked.remove(domain.lowercased()) } else { s.checked.insert(domain.lowercased()) }
        }
        box.withLock { $0 = s }
    }

    /// nil when the recipient's domain is not checked; else whether it is listed.
    public func knows(_ mailbox: Mailbox) -> Bool? {
        let domain = mailbox.normalizedDomain
        return box.withLock { s in
            guard s.checked.contains(domain) else { return nil }
            return s.addresses.contains(mailbox.canonical.lowercased())
        }
    }

    public var count: Int { box.withLock { $0.addresses.count } }
}

