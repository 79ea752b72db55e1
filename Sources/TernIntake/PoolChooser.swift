// Which source pool a message leaves from (issue 19), decided once at
// intake and stored with its recipients: a header tag first (e.g.
// `X-Tern-Pool: bulk`, honoured from submission, local, authenticated and
// trusted clients only, so that strangers cannot pick a pool; removed from
// every message before it is stored, so it is never sent), then the first
// `[[pool_rule]]` whose conditions all hold (sender domain or a parent of
// it, authenticated user, listener role), then the default pool (nil).
import TernProtocol

public struct PoolRule: Sendable, Equatable {
    public var pool: String
    /// The envelope sender's domain is one of these or under one of them.
    public var senderDomains: [String] = []
    /// The client authenticated as one of these users.
    public var users: [String] = []
    /// The listener's role: smtp, submission or local.
    public var listeners: [String] = []

    public init(pool: String, senderDomains: [String] = [], users: [String] = [], listeners: [String] = []) {
        self.pool = pool
        self.senderDomains = senderDomains.map { $0.lowercased() }
        self.users = users
        self.listeners = listeners
    }
}

public struct PoolChooser: Sendable {
    public var rules: [PoolRule]
    /// The header field that names a pool (nil: none is read, none removed).
    public var header: String?
    /// The pools that exist: a tag naming another is ignored.
    public var pools: Set<String>

    public init(rules: [PoolRule] = [], header: String? = "X-Tern-Pool", pools: Set<String>) {
        self.rules = rules
        self.header = header
        self.pools = pools
    }

    /// The pool for a message (nil: the default pool). `tag`: the header's
    /// value, if the message had one; `mayTag`: the client may choose.
    public func choose(mailFrom: String, authUser: String?, origin: Origin, tag: String?, mayTag: Bool) -> String? {
        if mayTag, let tag = tag?.trimmingCharacters(in: .whitespaces), pools.contains(tag) { return tag }
        let domain = mailFrom.split(separator: "@").last.map { $0.lowercased() } ?? ""
        for rule in rules {
            if !rule.senderDomains.isEmpty,
               !rule.senderDomains.contains(where: { !domain.isEmpty && (domain == $0 || domain.hasSuffix("." + $0)) }) { continue }
            if !rule.users.isEmpty, !rule.users.contains(where: { $0 == authUser }) { continue }
            if !rule.listeners.isEmpty, !rule.listeners.contains(origin.rawValue) { continue }
            return rule.pool
        }
        return nil
    }
}
