// Configuration: built-in defaults, overridden by the TOML file given with
// `--config`, overridden by command-line flags. Unknown keys in the file are
// an error, so a typo never silently falls back to a default.

import Foundation
import TOMLKit
import TernAuth
import TernDelivery
import TernListener
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
        c.policy.retry = RetrySchedule(firstDelayMillis: retryFirst * 1000, maxDelayMillis: retryMax * 1000)
        c.policy.maxQueueLifetimeMillis = maxQueueLifetime * 1000
        c.policy.delayWarningMillis = delayWarning * 1000
        c.policy.suppressOnHardBounce = suppressOnHardBounce
        return c
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
        return c
    }
}

public struct ConfigError: Error, CustomStringConvertible, Equatable {
    public var description: String
    public init(_ d: String) { description = d }
}

extension TernSettings {
    static let topKeys: Set<String> = ["hostname", "db", "listen", "listener", "relay_domains", "trusted_networks", "log_level",
                                       "limits", "routes", "resolvers", "remote_port", "delivery", "tls_cert", "tls_key", "auth",
                                       "retention", "tls"]
    static let retentionKeys: Set<String> = ["bodies", "history", "sweep_interval"]
    static let tlsKeys: Set<String> = ["min_version", "ciphers"]
    static let listenerKeys: Set<String> = ["address", "role", "plaintext_auth", "bare_newline"]
    static let authKeys: Set<String> = ["max_failures", "failure_window"]
    static let deliveryKeys: Set<String> = [
        "max_connections", "max_connections_per_destination", "messages_per_connection", "retry_first", "retry_max",
        "max_queue_lifetime", "delay_warning", "connect_timeout", "tls_policy", "tls_ca_file", "enabled", "suppress_on_hard_bounce",
        "breaker_threshold", "breaker_cooldown", "breaker_max_cooldown", "connection_cache_time", "ready_recipients", "ready_bytes",
    ]
    static let limitKeys: Set<String> = [
        "max_message_size", "max_recipients", "max_command_line", "max_text_line", "max_errors", "max_connections",
        "max_connections_per_client", "command_timeout", "data_timeout", "shutdown_grace", "max_hops",
        "max_junk_commands", "max_commands", "max_session_time", "message_memory", "client_ipv4_prefix", "client_ipv6_prefix",
        "bare_newline",
    ]

    /// Applies a TOML document on top of these settings.
    public mutating func apply(toml text: String, source: String = "config") throws {
        let table: TOMLTable
        do {
            table = try TOMLTable(string: text)
        } catch let e as TOMLParseError {
            throw ConfigError("\(source): TOML syntax error at \(e.source.begin)")
        }
        for key in table.keys where !TernSettings.topKeys.contains(key) {
            throw ConfigError("\(source): unknown key '\(key)' (known: \(TernSettings.topKeys.sorted().joined(separator: ", ")))")
        }
        func string(_ t: TOMLTable, _ k: String) throws -> String? {
            guard let v = t[k] else { return nil }
            guard let s = v.string else { throw ConfigError("\(source): '\(k)' must be a string") }
            return s
        }
        func strings(_ t: TOMLTable, _ k: String) throws -> [String]? {
            guard let v = t[k] else { return nil }
            guard let a = v.array else { throw ConfigError("\(source): '\(k)' must be an array of strings") }
            return try a.map { item in
                guard let s = item.string else { throw ConfigError("\(source): '\(k)' must be an array of strings") }
                return s
            }
        }
        func int(_ t: TOMLTable, _ k: String) throws -> Int? {
            guard let v = t[k] else { return nil }
            guard let i = v.int, i >= 0 else { throw ConfigError("\(source): '\(k)' must be a non-negative integer") }
            return i
        }
        if let v = try string(table, "hostname") { hostname = v }
        if let v = try string(table, "db") { db = v }
        if let v = try string(table, "log_level") { logLevel = try TernSettings.checkLogLevel(v) }
        var listeners: [ListenAddress] = []
        if let v = try strings(table, "listen") { listeners += try v.map(TernSettings.parseListen) }
        if let l = table["listener"] {
            guard let array = l.array else { throw ConfigError("\(source): 'listener' must be an array of tables ([[listener]])") }
            for item in array {
                guard let t = item.table else { throw ConfigError("\(source): 'listener' must be an array of tables ([[listener]])") }
                for key in t.keys where !TernSettings.listenerKeys.contains(key) {
                    throw ConfigError("\(source): unknown key 'listener.\(key)' (known: \(TernSettings.listenerKeys.sorted().joined(separator: ", ")))")
                }
                guard let address = try string(t, "address") else { throw ConfigError("\(source): a [[listener]] needs 'address'") }
                var l = try TernSettings.parseListen(address)
                if let r = try string(t, "role") { l.role = try TernSettings.parseRole(r) }
                if let v = t["plaintext_auth"] {
                    guard let b = v.bool else { throw ConfigError("\(source): 'listener.plaintext_auth' must be true or false") }
                    l.plaintextAuth = b
                }
                if let v = try string(t, "bare_newline") { l.bareNewline = try TernSettings.parseBareNewline(v) }
                listeners.append(l)
            }
        }
        if !listeners.isEmpty { listen = listeners }
        if let v = try strings(table, "relay_domains") { relayDomains = v }
        if let v = try strings(table, "trusted_networks") { trustedNetworks = try v.map(TernSettings.parseNetwork) }
        if let v = try string(table, "tls_cert") { tlsCert = v }
        if let v = try string(table, "tls_key") { tlsKey = v }
        if let v = try strings(table, "routes") { routes = try v.map(TernSettings.parseRoute) }
        if let v = try strings(table, "resolvers") { resolvers = try v.map(TernSettings.checkResolver) }
        if let v = try int(table, "remote_port") { remotePort = v }
        if let d = table["delivery"] {
            guard let delivery = d.table else { throw ConfigError("\(source): 'delivery' must be a table") }
            for key in delivery.keys where !TernSettings.deliveryKeys.contains(key) {
                throw ConfigError("\(source): unknown key 'delivery.\(key)' (known: \(TernSettings.deliveryKeys.sorted().joined(separator: ", ")))")
            }
            if let v = try int(delivery, "max_connections") { deliveryMaxConnections = v }
            if let v = try int(delivery, "max_connections_per_destination") { deliveryMaxPerDestination = v }
            if let v = try int(delivery, "messages_per_connection") { deliveryMessagesPerConnection = v }
            if let v = try int(delivery, "connection_cache_time") { connectionCacheMillis = Int64(v) * 1000 }
            if let v = try int(delivery, "ready_recipients") { readyRecipients = v }
            if let v = try int(delivery, "ready_bytes") { readyBytes = v }
            if let v = try int(delivery, "retry_first") { retryFirst = Int64(v) }
            if let v = try int(delivery, "retry_max") { retryMax = Int64(v) }
            if let v = try int(delivery, "max_queue_lifetime") { maxQueueLifetime = Int64(v) }
            if let v = try int(delivery, "delay_warning") { delayWarning = Int64(v) }
            if let v = try int(delivery, "connect_timeout") { connectTimeout = Int64(v) }
            if let v = try string(delivery, "tls_policy") { tlsPolicy = try TernSettings.parseTLSPolicy(v) }
            if let v = try string(delivery, "tls_ca_file") { tlsCAFile = v }
            if let v = try int(delivery, "breaker_threshold") { breakerPolicy.threshold = v }
            if let v = try int(delivery, "breaker_cooldown") { breakerPolicy.baseCooldownMillis = Int64(v) * 1000 }
            if let v = try int(delivery, "breaker_max_cooldown") { breakerPolicy.maxCooldownMillis = Int64(v) * 1000 }
            if let v = delivery["suppress_on_hard_bounce"] {
                guard let b = v.bool else { throw ConfigError("\(source): 'delivery.suppress_on_hard_bounce' must be true or false") }
                suppressOnHardBounce = b
            }
            if let v = delivery["enabled"] {
                guard let b = v.bool else { throw ConfigError("\(source): 'delivery.enabled' must be true or false") }
                deliver = b
            }
        }
        if let r = table["retention"] {
            guard let ret = r.table else { throw ConfigError("\(source): 'retention' must be a table") }
            for key in ret.keys where !TernSettings.retentionKeys.contains(key) {
                throw ConfigError("\(source): unknown key 'retention.\(key)' (known: \(TernSettings.retentionKeys.sorted().joined(separator: ", ")))")
            }
            if let v = try int(ret, "bodies") { retention.bodyDays = v }
            if let v = try int(ret, "history") { retention.historyDays = v }
            if let v = try int(ret, "sweep_interval") { retentionSweepSeconds = Int64(v) }
        }
        if let t = table["tls"] {
            guard let tls = t.table else { throw ConfigError("\(source): 'tls' must be a table") }
            for key in tls.keys where !TernSettings.tlsKeys.contains(key) {
                throw ConfigError("\(source): unknown key 'tls.\(key)' (known: \(TernSettings.tlsKeys.sorted().joined(separator: ", ")))")
            }
            if let v = try string(tls, "min_version") {
                switch v {
                case "1.2": tlsProfile.minimumVersion = .tlsv12
                case "1.3": tlsProfile.minimumVersion = .tlsv13
                default: throw ConfigError("\(source): 'tls.min_version' must be \"1.2\" or \"1.3\"")
                }
            }
            if let v = try string(tls, "ciphers") { tlsProfile.ciphers = v }
        }
        if let a = table["auth"] {
            guard let auth = a.table else { throw ConfigError("\(source): 'auth' must be a table") }
            for key in auth.keys where !TernSettings.authKeys.contains(key) {
                throw ConfigError("\(source): unknown key 'auth.\(key)' (known: \(TernSettings.authKeys.sorted().joined(separator: ", ")))")
            }
            if let v = try int(auth, "max_failures") { authMaxFailures = v }
            if let v = try int(auth, "failure_window") { authFailureWindow = Int64(v) }
        }
        if let l = table["limits"] {
            guard let limits = l.table else { throw ConfigError("\(source): 'limits' must be a table") }
            for key in limits.keys where !TernSettings.limitKeys.contains(key) {
                throw ConfigError("\(source): unknown key 'limits.\(key)' (known: \(TernSettings.limitKeys.sorted().joined(separator: ", ")))")
            }
            if let v = try int(limits, "max_message_size") { maxMessageSize = v }
            if let v = try int(limits, "max_recipients") { maxRecipients = v }
            if let v = try int(limits, "max_command_line") { maxCommandLine = v }
            if let v = try int(limits, "max_text_line") { maxTextLine = v }
            if let v = try int(limits, "max_errors") { maxErrors = v }
            if let v = try int(limits, "max_connections") { maxConnections = v }
            if let v = try int(limits, "max_connections_per_client") { maxConnectionsPerClient = v }
            if let v = try int(limits, "command_timeout") { commandTimeout = Int64(v) }
            if let v = try int(limits, "data_timeout") { dataTimeout = Int64(v) }
            if let v = try int(limits, "shutdown_grace") { shutdownGrace = Int64(v) }
            if let v = try int(limits, "max_hops") { maxHops = v }
            if let v = try int(limits, "max_junk_commands") { maxJunkCommands = v }
            if let v = try int(limits, "max_commands") { maxCommands = v }
            if let v = try int(limits, "max_session_time") { maxSessionSeconds = Int64(v) }
            if let v = try int(limits, "message_memory") { messageMemory = v }
            if let v = try int(limits, "client_ipv4_prefix") { clientIPv4Prefix = v }
            if let v = try int(limits, "client_ipv6_prefix") { clientIPv6Prefix = v }
            if let v = try string(limits, "bare_newline") { bareNewline = try TernSettings.parseBareNewline(v) }
        }
        try validate()
    }

    public mutating func apply(configFile path: String) throws {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigError("cannot read config file \(path)")
        }
        try apply(toml: String(decoding: data, as: UTF8.self), source: path)
    }

    public func validate() throws {
        if maxCommandLine < 512 { throw ConfigError("limits.max_command_line must be at least 512 (RFC 5321 §4.5.3.1.4)") }
        if maxTextLine < 1000 { throw ConfigError("limits.max_text_line must be at least 1000 (RFC 5321 §4.5.3.1.6)") }
        if maxRecipients < 1 { throw ConfigError("limits.max_recipients must be at least 1") }
        if maxErrors < 1 { throw ConfigError("limits.max_errors must be at least 1") }
        if maxHops < 2 { throw ConfigError("limits.max_hops must be at least 2") }
        if maxJunkCommands < 1 || maxCommands < 10 { throw ConfigError("limits.max_junk_commands must be ≥ 1 and limits.max_commands ≥ 10") }
        if maxSessionSeconds < 60 { throw ConfigError("limits.max_session_time must be at least 60 seconds") }
        if messageMemory < maxMessageSize { throw ConfigError("limits.message_memory must be at least limits.max_message_size") }
        if !(8...32).contains(clientIPv4Prefix) || !(16...128).contains(clientIPv6Prefix) {
            throw ConfigError("limits.client_ipv4_prefix must be 8-32 and limits.client_ipv6_prefix 16-128")
        }
        if maxConnections < 1 || maxConnectionsPerClient < 1 { throw ConfigError("connection limits must be at least 1") }
        if commandTimeout < 1 || dataTimeout < 1 { throw ConfigError("timeouts must be at least 1 second") }
        if hostname.isEmpty { throw ConfigError("hostname must not be empty") }
        if !(1...65535).contains(remotePort) { throw ConfigError("remote_port must be 1-65535") }
        if (tlsCert == nil) != (tlsKey == nil) { throw ConfigError("tls_cert and tls_key go together") }
        if breakerPolicy.threshold < 1 || breakerPolicy.baseCooldownMillis < 1000 || breakerPolicy.maxCooldownMillis < breakerPolicy.baseCooldownMillis {
            throw ConfigError("delivery.breaker_threshold must be ≥ 1, breaker_cooldown ≥ 1 s and ≤ breaker_max_cooldown")
        }
        if retention.historyDays < retention.bodyDays {
            throw ConfigError("retention.history (\(retention.historyDays) days) must be at least retention.bodies (\(retention.bodyDays))")
        }
        if authMaxFailures < 1 || authFailureWindow < 1 { throw ConfigError("auth.max_failures and auth.failure_window must be at least 1") }
        if deliveryMaxConnections < 1 || deliveryMaxPerDestination < 1 || deliveryMessagesPerConnection < 1 {
            throw ConfigError("delivery limits must be at least 1")
        }
        if retryFirst < 1 || retryMax < retryFirst { throw ConfigError("delivery.retry_first must be ≥ 1 and ≤ delivery.retry_max") }
        if maxQueueLifetime < 1 { throw ConfigError("delivery.max_queue_lifetime must be at least 1 second") }
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
