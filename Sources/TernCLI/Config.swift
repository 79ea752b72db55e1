// Configuration: built-in defaults, overridden by the TOML file given with
// `--config`, overridden by command-line flags. Unknown keys in the file are
// an error, so a typo never silently falls back to a default. The settings
// are declared once, in SettingsTable.swift; this file holds the resolved
// values, the component configurations derived from them, and applying a
// file or flags through the declarations.

import Foundation
import TOMLKit
import TernAuth
import TernDKIM
import TernDelivery
import TernHTTP
import TernIntake
import TernListener
import TernMailAuth
import TernProtocol
import TernRouting
import TernScheduler
import TernStore

/// Everything `tern serve` needs, resolved.
public struct TernSettings: Sendable {
    public var hostname: String = TernSettings.defaultHostname()
    public var db: String = DatabaseOptions.defaultDatabase
    public var listen: [ListenAddress] = [ListenAddress("127.0.0.1", 2525)]
    public var relayDomains: [String] = []
    public var trustedNetworks: [IPNetwork] = IPNetwork.loopback
    public var logLevel: String = "info"
    public var maxMessageSize = defaults.session.maxMessageSize
    public var maxRecipients = defaults.session.maxRecipients
    public var maxCommandLine = defaults.session.maxCommandLine
    public var maxTextLine = defaults.session.maxTextLine
    public var maxErrors = defaults.session.maxErrors
    public var maxConnections = defaults.maxConnections
    public var maxConnectionsPerClient = defaults.maxConnectionsPerClient
    public var commandTimeout = defaults.commandTimeoutSeconds
    public var dataTimeout = defaults.dataTimeoutSeconds
    public var shutdownGrace = defaults.shutdownGraceSeconds
    /// `Received:` fields a message may carry (Postfix's hopcount_limit).
    public var maxHops = 50
    public var maxJunkCommands = defaults.session.maxJunkCommands
    public var maxCommands = defaults.session.maxCommands
    public var maxSessionSeconds = defaults.maxSessionSeconds
    public var messageMemory = defaults.messageMemory
    public var clientIPv4Prefix = defaults.clientIPv4Prefix
    public var clientIPv6Prefix = defaults.clientIPv6Prefix
    /// What listeners without their own `bare_newline` do with a bare LF.
    public var bareNewline = defaults.session.bareNewline
    // Delivery
    public var routes: [StaticRoute] = []
    /// DNS servers as HOST:PORT; empty means the system's (/etc/resolv.conf).
    public var resolvers: [String] = []
    public var remotePort = 25
    public var deliveryMaxConnections = deliveryDefaults.maxConnections
    public var deliveryMaxPerDestination = deliveryDefaults.maxConnectionsPerDestination
    public var deliveryMessagesPerConnection = deliveryDefaults.messagesPerConnection
    /// Milliseconds an idle delivery connection waits for more (0: close at once).
    public var connectionCacheMillis = deliveryDefaults.connectionCacheMillis
    /// Claimed at intake: recipients and body bytes waiting in memory for a worker.
    public var readyRecipients = deliveryDefaults.readyRecipients
    public var readyBytes = deliveryDefaults.readyBytes
    /// Message bodies outbound connections may hold read back from the database.
    public var bodyMemory = deliveryDefaults.bodyMemory
    public var retryFirst = deliveryDefaults.policy.retry.firstDelayMillis / 1000
    public var retryMax = deliveryDefaults.policy.retry.maxDelayMillis / 1000
    public var maxQueueLifetime = deliveryDefaults.policy.maxQueueLifetimeMillis / 1000
    public var delayWarning = deliveryDefaults.policy.delayWarningMillis / 1000
    public var connectTimeout: Int64 = 30
    /// Certificate chain and key (PEM) for STARTTLS on the listeners.
    public var tlsCert: String? = nil
    public var tlsKey: String? = nil
    /// The listeners' TLS versions and TLS 1.2 suites (`[tls] min_version`, `ciphers`).
    public var tlsProfile = TLSProfile()
    /// Run the scheduler (false: accept and queue only).
    public var deliver = true
    public var tlsPolicy: TLSPolicy = .may
    public var tlsCAFile: String? = nil
    /// Retention: `tern prune` and the periodic sweep of `tern serve`.
    public var retention = RetentionPolicy()
    /// Seconds between retention sweeps in `tern serve` (0: never).
    public var retentionSweepSeconds: Int64 = 3600
    public var suppressOnHardBounce = true
    /// The circuit breaker for MX hosts.
    public var breakerPolicy = BreakerPolicy()
    // SMTP AUTH: the failed-login throttle.
    public var authMaxFailures = ThrottlePolicy().maxFailures
    public var authFailureWindow = ThrottlePolicy().windowMillis / 1000
    /// DKIM keys (`[[dkim]]` tables), loaded by `dkimSigner()`.
    public var dkimKeys: [DKIMKeyConfig] = []
    /// How mail is signed (`[signing]`).
    public var signing = DKIMSigningPolicy()
    /// Providers added to the shipped table (`[[provider]]`).
    public var providers: [ProviderRule] = []
    /// The providers' table: the shipped rules and `providers` over them.
    public var providerTable: ProviderTable { ProviderTable(custom: providers) }
    // Traffic shaping (`[shaping]`, ShapingSettings.swift).
    public var shapingEnabled = true
    public var shippedThrottleRules = true
    public var rampStepPercent = 10
    public var rampIntervalSeconds: Int64 = 60
    public var rampSuccesses = 100
    public var shapingRequireTLS = false
    public var shapingDefaults = ShapingLimits()
    public var shapingDestinations: [String: ShapingLimits] = [:]
    public var throttleRules: [ThrottleRule] = []
    public var bounceRules: [BounceRule] = []
    public var suppressCategories: [BounceCategory] = BounceCategory.allCases.filter { BounceCategory.suppressingByDefault.contains($0) }
    // Sources, pools, warm-up and blocklists (SourceSettings.swift).
    public var sources: [SourceConfig] = []
    public var pools: [PoolConfig] = []
    public var poolRules: [PoolRule] = []
    public var warmupPlans: [WarmupPlan] = []
    public var blocklist = BlocklistConfig()
    /// The header field that names a message's pool ("": none).
    public var poolHeader = "X-Tern-Pool"
    /// The HTTP listener's HOST:PORT ("": none).
    public var httpListen = ""
    public var httpTLS = false
    /// `[[webhook]]` endpoints.
    public var webhooks: [WebhookEndpoint] = []
    public var httpTLSCert: String? = nil
    public var httpTLSKey: String? = nil
    /// SPF, DKIM and DMARC for mail from other MTAs (`[verify]`).
    public var verifyPolicy: VerifyPolicy = .record
    /// "" stands for the host name.
    public var authservID = ""
    public var publicSuffixList = PublicSuffixList.debianPath
    /// Where each value that is not a default came from (`tern config show`).
    public var origins: Origins = [:]

    /// The throttle these settings describe.
    public var throttlePolicy: ThrottlePolicy {
        var p = ThrottlePolicy()
        p.maxFailures = authMaxFailures
        p.windowMillis = authFailureWindow * 1000
        return p
    }

    static let deliveryDefaults = SchedulerConfig(hostname: "localhost")

    /// The scheduler configuration these settings describe.
    public var schedulerConfig: SchedulerConfig {
        var c = SchedulerConfig(hostname: hostname)
        c.maxConnections = deliveryMaxConnections
        c.maxConnectionsPerDestination = deliveryMaxPerDestination
        c.messagesPerConnection = deliveryMessagesPerConnection
        c.connectionCacheMillis = connectionCacheMillis
        c.readyRecipients = readyRecipients
        c.readyBytes = readyBytes
        c.bodyMemory = bodyMemory
        c.policy.retry = RetrySchedule(firstDelayMillis: retryFirst * 1000, maxDelayMillis: retryMax * 1000)
        c.policy.maxQueueLifetimeMillis = maxQueueLifetime * 1000
        c.policy.delayWarningMillis = delayWarning * 1000
        c.policy.suppressOnHardBounce = suppressOnHardBounce
        c.policy.suppressCategories = Set(suppressCategories)
        c.policy.classifier = classifier
        c.providers = providerTable
        return c
    }

    /// The name Authentication-Results: fields carry: `[verify] authserv_id`, else the host name.
    public var effectiveAuthservID: String { authservID.isEmpty ? hostname : authservID }

    /// The c-ares resolver of `serve`, `tern dkim check` and `tern auth`:
    /// `flags` (their --resolver, checked here) when given, else the
    /// configured resolvers, else the system's.
    public func resolver(overriding flags: [String] = []) throws -> CAresResolver {
        for f in flags { _ = try TernSettings.checkResolver(f) }
        let servers = flags.isEmpty ? resolvers : flags
        return try CAresResolver(servers: servers.isEmpty ? nil : servers)
    }

    /// SPF, DKIM and DMARC over `dns` behind a TTL cache; the Public Suffix List is read now, once.
    public func verifier(dns: any AuthDNS) throws -> MailVerifier {
        let psl: PublicSuffixList
        do { psl = try PublicSuffixList(path: publicSuffixList) } catch { throw ConfigError("verify: \(error)") }
        return MailVerifier(dns: CachingAuthDNS(base: dns, clock: { nowMillis() }), psl: psl, authservID: effectiveAuthservID,
                            clock: { nowMillis() })
    }

    /// The checks of mail from other MTAs when a relay listener runs them, nil otherwise.
    public func mailVerifier(dns: any AuthDNS) throws -> MailVerifier? {
        guard listen.contains(where: { $0.role == .relay && ($0.verify ?? verifyPolicy) != .off }) else { return nil }
        return try verifier(dns: dns)
    }

    /// The listener's own defaults are the one source of the default limits.
    static let defaults = ListenerConfig(session: SessionConfig(hostname: "localhost"))

    public init() {}

    static func defaultHostname() -> String {
        var buf = [CChar](repeating: 0, count: 256)
        if gethostname(&buf, buf.count) == 0 {
            let name = String(decoding: buf.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
            if !name.isEmpty { return name }
        }
        return "localhost"
    }

    /// The listener configuration these settings describe.
    public var listenerConfig: ListenerConfig {
        var session = SessionConfig(hostname: hostname)
        session.maxMessageSize = maxMessageSize
        session.maxRecipients = maxRecipients
        session.maxCommandLine = maxCommandLine
        session.maxTextLine = maxTextLine
        session.maxErrors = maxErrors
        session.maxJunkCommands = maxJunkCommands
        session.maxCommands = maxCommands
        session.bareNewline = bareNewline
        session.relay = RelayPolicy(relayDomains: relayDomains, trustedNetworks: trustedNetworks)
        var c = ListenerConfig(session: session)
        c.listen = listen
        c.commandTimeoutSeconds = commandTimeout
        c.dataTimeoutSeconds = dataTimeout
        c.maxConnections = maxConnections
        c.maxConnectionsPerClient = maxConnectionsPerClient
        c.shutdownGraceSeconds = shutdownGrace
        c.maxSessionSeconds = maxSessionSeconds
        c.messageMemory = messageMemory
        c.clientIPv4Prefix = clientIPv4Prefix
        c.clientIPv6Prefix = clientIPv6Prefix
        c.verifyPolicy = verifyPolicy
        return c
    }
}

public struct ConfigError: Error, CustomStringConvertible, Equatable {
    public var description: String
    public init(_ d: String) { description = d }
}

extension TernSettings {
    /// Where a setting's value came from: `file PATH` or `flag --NAME`;
    /// absent: the default.
    public typealias Origins = [String: String]

    static func setting(_ key: String) -> Setting? { declared.first { $0.key == key } }

    /// Applies a TOML document on top of these settings.
    public mutating func apply(toml text: String, source: String = "config") throws {
        let table: TOMLTable
        do {
            table = try TOMLTable(string: text)
        } catch let e as TOMLParseError {
            throw ConfigError("\(source): TOML syntax error at \(e.source.begin)")
        }
        do {
            try apply(table, origin: "file \(source)")
        } catch let e as ConfigError {
            throw ConfigError("\(source): \(e.description)")
        }
        try validate()
    }

    private mutating func apply(_ document: TOMLTable, origin: String) throws {
        let tables = Set(TernSettings.declared.compactMap(\.table))
        let topKeys = Set(TernSettings.declared.filter { $0.table == nil }.map(\.key)).union(tables).union(["listener", "dkim", "provider", "throttle_rule", "bounce_rule", "source", "pool",
                                                                                                                   "pool_rule", "warmup_plan", "webhook"])
        for key in document.keys where !topKeys.contains(key) {
            throw ConfigError("unknown key '\(key)' (known: \(topKeys.sorted().joined(separator: ", ")))")
        }
        for name in tables.sorted() {
            guard let value = document[name] else { continue }
            guard let t = value.table else { throw ConfigError("'\(name)' must be a table") }
            let known = Set(TernSettings.declared.filter { $0.table == name }.map(\.name)).union(name == "shaping" ? ["destination"] : [])
            for key in t.keys where !known.contains(key) {
                throw ConfigError("unknown key '\(name).\(key)' (known: \(known.sorted().joined(separator: ", ")))")
            }
        }
        for setting in TernSettings.declared {
            let holder = setting.table.map { document[$0]?.table } ?? document
            guard let raw = holder?[setting.name] else { continue }
            try setting.set(&self, try TernSettings.value(raw, for: setting))
            origins[setting.key] = origin
        }
        if let d = document["dkim"] {
            dkimKeys = try TernSettings.dkimTables(d)
            origins["dkim"] = origin
        }
        if let d = document["shaping"]?.table?["destination"] {
            shapingDestinations = try TernSettings.shapingDestinationTables(d)
            origins["shaping.destination"] = origin
        }
        if let r = document["throttle_rule"] {
            throttleRules = try TernSettings.throttleRuleTables(r)
            origins["throttle_rule"] = origin
        }
        if let r = document["bounce_rule"] {
            bounceRules = try TernSettings.bounceRuleTables(r)
            origins["bounce_rule"] = origin
        }
        if let v = document["source"] {
            sources = try TernSettings.sourceTables(v)
            origins["source"] = origin
        }
        if let v = document["pool"] {
            pools = try TernSettings.poolTables(v)
            origins["pool"] = origin
        }
        if let v = document["webhook"] {
            webhooks = try TernSettings.webhookTables(v)
            origins["webhook"] = origin
        }
        if let v = document["pool_rule"] {
            poolRules = try TernSettings.poolRuleTables(v)
            origins["pool_rule"] = origin
        }
        if let v = document["warmup_plan"] {
            warmupPlans = try TernSettings.warmupPlanTables(v)
            origins["warmup_plan"] = origin
        }
        if let p = document["provider"] {
            providers = try TernSettings.providerTables(p)
            origins["provider"] = origin
        }
        if let l = document["listener"] {
            let fromListen = document["listen"] != nil ? listen : []
            listen = fromListen + (try TernSettings.listenerTables(l))
            origins["listen"] = origin
        }
    }

    /// A TOML value as the setting's kind expects it.
    static func value(_ raw: any TOMLValueConvertible, for setting: Setting) throws -> SettingValue {
        switch setting.kind {
        case .integer:
            guard let i = raw.int, i >= 0 else { throw ConfigError("'\(setting.key)' must be a non-negative integer") }
            return .int(i)
        case .boolean:
            guard let b = raw.bool else { throw ConfigError("'\(setting.key)' must be true or false") }
            return .bool(b)
        case .text, .choice:
            guard let s = raw.string else { throw ConfigError("'\(setting.key)' must be a string") }
            return .string(s)
        case .list:
            guard let a = raw.array else { throw ConfigError("'\(setting.key)' must be an array of strings") }
            return .strings(try a.map { item in
                guard let s = item.string else { throw ConfigError("'\(setting.key)' must be an array of strings") }
                return s
            })
        }
    }

    /// `[[listener]]` tables.
    static func listenerTables(_ value: any TOMLValueConvertible) throws -> [ListenAddress] {
        guard let array = value.array else { throw ConfigError("'listener' must be an array of tables ([[listener]])") }
        let known = Set(listenerKeys.map(\.0))
        return try array.map { item in
            guard let t = item.table else { throw ConfigError("'listener' must be an array of tables ([[listener]])") }
            for key in t.keys where !known.contains(key) {
                throw ConfigError("unknown key 'listener.\(key)' (known: \(known.sorted().joined(separator: ", ")))")
            }
            guard let address = t["address"]?.string else { throw ConfigError("a [[listener]] needs 'address'") }
            var l = try parseListen(address)
            if let r = t["role"] {
                guard let text = r.string else { throw ConfigError("'listener.role' must be a string") }
                l.role = try parseRole(text)
            }
            if let v = t["plaintext_auth"] {
                guard let b = v.bool else { throw ConfigError("'listener.plaintext_auth' must be true or false") }
                l.plaintextAuth = b
            }
            if let v = t["bare_newline"] {
                guard let text = v.string else { throw ConfigError("'listener.bare_newline' must be a string") }
                l.bareNewline = try parseBareNewline(text)
            }
            if let v = t["dkim"] {
                guard let text = v.string, text == "auto" || text == "off" else { throw ConfigError("'listener.dkim' must be \"auto\" or \"off\"") }
                l.dkimSign = text == "auto"
            }
            if let v = t["verify"] {
                guard let text = v.string, let p = VerifyPolicy(rawValue: text) else {
                    throw ConfigError("'listener.verify' must be one of \(VerifyPolicy.allCases.map { "\"\($0.rawValue)\"" }.joined(separator: ", "))")
                }
                l.verify = p
            }
            if let v = t["spf_reject"] {
                guard let b = v.bool else { throw ConfigError("'listener.spf_reject' must be true or false") }
                l.spfReject = b
            }
            return l
        }
    }

    /// `[[provider]]` tables: `name` and `mx_suffixes`.
    static func providerTables(_ value: any TOMLValueConvertible) throws -> [ProviderRule] {
        guard let array = value.array else { throw ConfigError("'provider' must be an array of tables ([[provider]])") }
        return try array.map { item in
            guard let t = item.table else { throw ConfigError("'provider' must be an array of tables ([[provider]])") }
            for key in t.keys where key != "name" && key != "mx_suffixes" {
                throw ConfigError("unknown key 'provider.\(key)' (known: mx_suffixes, name)")
            }
            guard let name = t["name"]?.string, !name.isEmpty, name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-") }) else {
                throw ConfigError("a [[provider]] needs a 'name' of letters, digits and hyphens")
            }
            guard let list = t["mx_suffixes"]?.array, !list.isEmpty else { throw ConfigError("the [[provider]] \(name) needs 'mx_suffixes' (MX host suffixes)") }
            let suffixes = try list.map { v -> String in
                guard let s = v.string, s.contains("."), !s.contains(" ") else {
                    throw ConfigError("'provider.mx_suffixes' of \(name) must be host name suffixes such as \"mx.example.net\"")
                }
                return s
            }
            return ProviderRule(name: name, mxSuffixes: suffixes)
        }
    }

    /// `[[dkim]]` tables.
    static func dkimTables(_ value: any TOMLValueConvertible) throws -> [DKIMKeyConfig] {
        guard let array = value.array else { throw ConfigError("'dkim' must be an array of tables ([[dkim]])") }
        let known = Set(dkimKeyNames.map(\.0))
        return try array.map { item in
            guard let t = item.table else { throw ConfigError("'dkim' must be an array of tables ([[dkim]])") }
            for key in t.keys where !known.contains(key) {
                throw ConfigError("unknown key 'dkim.\(key)' (known: \(known.sorted().joined(separator: ", ")))")
            }
            func text(_ k: String) throws -> String? {
                guard let v = t[k] else { return nil }
                guard let s = v.string, !s.isEmpty else { throw ConfigError("'dkim.\(k)' must be a non-empty string") }
                return s
            }
            guard let domain = try text("domain") else { throw ConfigError("a [[dkim]] key needs 'domain'") }
            guard let selector = try text("selector") else { throw ConfigError("the [[dkim]] key of \(domain) needs 'selector'") }
            guard let file = try text("key_file") else { throw ConfigError("the [[dkim]] key \(selector) of \(domain) needs 'key_file'") }
            var algorithm: DKIMPrivateKey.Algorithm? = nil
            if let a = try text("algorithm") {
                guard let parsed = DKIMPrivateKey.Algorithm(rawValue: a) else { throw ConfigError("'dkim.algorithm' must be rsa or ed25519") }
                algorithm = parsed
            }
            return DKIMKeyConfig(domain: domain.lowercased(), selector: selector, keyFile: file, algorithm: algorithm)
        }
    }

    /// The signer the `[[dkim]]` keys and `[signing]` describe (nil: no
    /// keys). Reads every key file now: a missing or unreadable file, a key
    /// too small or of the wrong kind is an error here, at start-up.
    public func dkimSigner() throws -> DKIMSigner? {
        guard !dkimKeys.isEmpty else {
            if let s = signing.signAs { throw ConfigError("signing.sign_as is \(s) but there is no [[dkim]] key") }
            return nil
        }
        let keys = try dkimKeys.map { k -> DKIMKey in
            guard let data = FileManager.default.contents(atPath: k.keyFile) else {
                throw ConfigError("dkim: cannot read the key file \(k.keyFile) (\(k.selector)._domainkey.\(k.domain))")
            }
            do {
                let key = try DKIMPrivateKey(pem: String(decoding: data, as: UTF8.self), expected: k.algorithm, source: k.keyFile)
                return DKIMKey(domain: k.domain, selector: k.selector, key: key)
            } catch let e as DKIMError {
                throw ConfigError("dkim: \(e.description)")
            }
        }
        do { return try DKIMSigner(keys: keys, policy: signing) } catch let e as DKIMError { throw ConfigError(e.description) }
    }

    public mutating func apply(configFile path: String) throws {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigError("cannot read config file \(path)")
        }
        try apply(toml: String(decoding: data, as: UTF8.self), source: path)
    }

    /// Applies a flag's values (one per occurrence; none: the flag was not
    /// given) to the setting `key` declares.
    public mutating func apply(flag key: String, _ values: [String]) throws {
        guard !values.isEmpty, let setting = TernSettings.setting(key) else { return }
        let flag = "--" + (setting.flag ?? key)
        let value: SettingValue
        switch setting.kind {
        case .integer:
            guard let i = Int(values.last!), i >= 0 else { throw ConfigError("\(flag) must be a non-negative integer") }
            value = .int(i)
        case .boolean:
            value = .bool(values.last! == "true")
        case .text, .choice:
            value = .string(values.last!)
        case .list:
            value = .strings(values)
        }
        try setting.set(&self, value)
        origins[key] = "flag \(flag)"
    }

    public func validate() throws {
        for setting in TernSettings.declared {
            if let range = setting.range, case .int(let i) = setting.get(self), !range.contains(i) {
                throw ConfigError(Setting.outOfRange(setting.key, range))
            }
        }
        for (message, holds) in TernSettings.crossChecks where !holds(self) { throw ConfigError(message) }
        try validateSources()
    }

    /// Checks that need the file and the flags together (run by `serve` once both are applied).
    public func validateForServe() throws {
        try validate()
        for l in listen where l.role.implicitTLS && tlsCert == nil {
            throw ConfigError("the submissions listener \(l.host):\(l.port) needs tls_cert and tls_key (TLS from the first byte, RFC 8314)")
        }
    }

    /// `[ROLE@]HOST:PORT`: ROLE relay (the default), submission or submissions.
    public static func parseListen(_ text: String) throws -> ListenAddress {
        var role = ListenerRole.relay
        var rest = Substring(text)
        if let at = text.firstIndex(of: "@") {
            role = try parseRole(String(text[..<at]))
            rest = text[text.index(after: at)...]
        }
        let (host, port) = try parseHostPort(String(rest))
        return ListenAddress(host, port, role: role)
    }

    public static func parseRole(_ text: String) throws -> ListenerRole {
        guard let r = ListenerRole(rawValue: text) else {
            throw ConfigError("bad listener role '\(text)' (one of \(ListenerRole.allCases.map(\.rawValue).joined(separator: ", ")))")
        }
        return r
    }

    /// `HOST:PORT`, `[IPv6]:PORT` or `:PORT` (all addresses).
    public static func parseHostPort(_ text: String) throws -> (host: String, port: Int) {
        var host: Substring, portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else {
                throw ConfigError("bad listen address '\(text)' (use HOST:PORT or [IPv6]:PORT)")
            }
            host = text[text.index(after: text.startIndex)..<close]
            portText = text[text.index(close, offsetBy: 2)...]
        } else {
            guard let colon = text.lastIndex(of: ":") else {
                throw ConfigError("bad listen address '\(text)' (use HOST:PORT)")
            }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
        }
        guard let port = Int(portText), (0...65535).contains(port) else {
            throw ConfigError("bad port in listen address '\(text)'")
        }
        return (host.isEmpty ? "0.0.0.0" : String(host), port)
    }

    public static func parseBareNewline(_ text: String) throws -> BareNewlinePolicy {
        guard let p = BareNewlinePolicy(rawValue: text) else {
            throw ConfigError("bad bare_newline '\(text)' (one of normalize, reject)")
        }
        return p
    }

    public static func parseTLSPolicy(_ text: String) throws -> TLSPolicy {
        guard let p = TLSPolicy(rawValue: text) else {
            throw ConfigError("bad TLS policy '\(text)' (one of \(TLSPolicy.allCases.map(\.rawValue).joined(separator: ", ")))")
        }
        return p
    }

    public static func parseRoute(_ text: String) throws -> StaticRoute {
        guard let r = StaticRoute(parsing: text) else {
            throw ConfigError("bad route '\(text)' (use DOMAIN=HOST[:PORT], HOST a name, an IPv4 address or [IPv6]; DOMAIN * for every domain)")
        }
        return r
    }

    /// `HOST:PORT` or `[IPv6]:PORT` of a DNS server.
    public static func checkResolver(_ text: String) throws -> String {
        let (host, port) = try parseHostPort(text)
        guard IPAddress(host) != nil, port > 0 else {
            throw ConfigError("bad resolver '\(text)' (use IP:PORT such as 127.0.0.1:53 or [::1]:53)")
        }
        return text
    }

    public static func parseNetwork(_ text: String) throws -> IPNetwork {
        guard let n = IPNetwork(text) else { throw ConfigError("bad network '\(text)' (use CIDR such as 10.0.0.0/8)") }
        return n
    }

    static func checkLogLevel(_ s: String) throws -> String {
        let levels = ["trace", "debug", "info", "notice", "warning", "error", "critical"]
        guard levels.contains(s) else { throw ConfigError("log_level must be one of \(levels.joined(separator: ", "))") }
        return s
    }
}

/// One `[[dkim]]` table: a key file, read at start-up.
public struct DKIMKeyConfig: Sendable, Equatable {
    public var domain: String
    public var selector: String
    public var keyFile: String
    public var algorithm: DKIMPrivateKey.Algorithm?
}
