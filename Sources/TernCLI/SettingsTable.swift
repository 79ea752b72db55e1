// The declarations themselves (see Settings.swift), in the order of the
// reference: top-level keys, then one TOML table after another.
// `[[listener]]` (an array of tables) is the one shape a row cannot hold;
// its keys are listed in `listenerKeys` and documented with the table.

import TernScheduler
import NIOSSL
import TernDKIM
import TernListener
import TernMessage
import TernProtocol

extension TernSettings {
    public static let declared: [Setting] = top + delivery + limits + tls + auth + retention + signing + verify + shaping + blocklistSettings + http

    static let http: [Setting] = [
        .string("http.listen", \.httpListen, flag: "http", defaultText: "none", example: "127.0.0.1:8025", check: { text in
            guard text.isEmpty || TernSettings.hostPort(text) != nil else { throw ConfigError("'http.listen' must be HOST:PORT, such as 127.0.0.1:8025") }
            return text
        }, "the HTTP listener (/health, /metrics, /api/v1, /dashboard; a bearer token from `tern api token add` for all but /health); none: off"),
        .bool("http.tls", \.httpTLS, "serve HTTPS: with http.tls_cert and http.tls_key, else the listeners' tls_cert and tls_key"),
        .optional("http.tls_cert", \.httpTLSCert, example: "/etc/tern/http-cert.pem", "certificate chain (PEM) for the HTTP listener (default tls_cert)"),
        .optional("http.tls_key", \.httpTLSKey, example: "/etc/tern/http-key.pem", "private key (PEM) of http.tls_cert (default tls_key)"),
    ]

    /// `HOST:PORT` or `[IPv6]:PORT`.
    static func hostPort(_ text: String) -> (host: String, port: Int)? {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (0...65535).contains(port) else { return nil }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        return host.isEmpty ? nil : (host, port)
    }

    /// Keys of one `[[listener]]` table: name, kind, help.
    static let listenerKeys: [(String, Setting.Kind, String)] = [
        ("address", .text, "[ROLE@]HOST:PORT, as a `listen` entry (required)"),
        ("role", .choice(ListenerRole.allCases.map(\.rawValue)), "relay: port 25 rules; submission: AUTH required, STARTTLS; submissions: TLS from the first byte"),
        ("plaintext_auth", .boolean, "offer AUTH without TLS, to loopback clients only"),
        ("bare_newline", .choice(BareNewlinePolicy.allCases.map(\.rawValue)), "this listener's policy for a text line ending in a bare LF"),
        ("dkim", .choice(["auto", "off"]), "auto: DKIM-sign mail from this listener's authenticated and trusted clients; off: never"),
        ("verify", .choice(VerifyPolicy.allCases.map(\.rawValue)),
         "SPF, DKIM and DMARC on mail from other MTAs (relay listeners; untrusted, unauthenticated clients): off, record, or enforce (DMARC p=reject refused)"),
        ("spf_reject", .boolean, "refuse MAIL with 550 5.7.23 when SPF fails (-all); needs verify on"),
    ]

    /// Keys of one `[[dkim]]` table: name, kind, help.
    static let dkimKeyNames: [(String, Setting.Kind, String)] = [
        ("domain", .text, "the signing domain (d=); mail whose From: domain is it or a subdomain of it is signed with this key"),
        ("selector", .text, "the selector (s=): the key's record is at SELECTOR._domainkey.DOMAIN"),
        ("key_file", .text, "the private key, PEM (PKCS#8, or PKCS#1 for RSA; `tern dkim keygen` writes one); RSA at least 2048 bits"),
        ("algorithm", .choice(DKIMPrivateKey.Algorithm.allCases.map(\.rawValue)), "checked against the key; inferred from it when absent"),
    ]

    static let top: [Setting] = [
        .string("hostname", \.hostname, flag: "hostname", defaultText: "the system host name", example: "mx.example.test",
                check: { $0 }, "name in the greeting, the EHLO reply and Received: fields"),
        .string("db", \.db, defaultText: "/var/lib/tern/tern.sqlite (root), ~/.local/share/tern/tern.sqlite (others)",
                example: "/var/lib/tern/tern.sqlite", "the SQLite database; relative: from the config file's folder; $TERN_DB and --db win"),
        .list("listen", \.listen, flag: "listen", example: ["127.0.0.1:2525", "[::1]:2525", "submission@127.0.0.1:587"],
              parse: TernSettings.parseListen, show: \.text,
              "addresses to listen on: [ROLE@]HOST:PORT, [IPv6]:PORT or :PORT; port 0 picks a free port; with [[listener]] tables, both"),
        .list("relay_domains", \.relayDomains, flag: "relay-domain", example: ["example.test", ".example.org"], parse: { $0 }, show: { $0 },
              "domains mail is accepted for from anyone; a leading dot matches subdomains too"),
        .list("trusted_networks", \.trustedNetworks, flag: "trusted-network", parse: TernSettings.parseNetwork, show: \.description,
              "clients that may relay to any domain (CIDR); giving any replaces the default"),
        .string("log_level", \.logLevel, flag: "log-level", check: TernSettings.checkLogLevel,
                "trace, debug, info, notice, warning, error or critical"),
        .list("routes", \.routes, flag: "route", example: ["example.net=127.0.0.1:2626", "*=smarthost.example.org"],
              parse: TernSettings.parseRoute, show: \.text,
              "DOMAIN=HOST[:PORT]: deliver DOMAIN's mail to HOST instead of its MX; * is every domain (a smarthost)"),
        .list("resolvers", \.resolvers, flag: "resolver", example: ["127.0.0.1:53"], parse: TernSettings.checkResolver, show: { $0 },
              "DNS servers (IP:PORT) for MX and address look-ups; none: /etc/resolv.conf"),
        .int("remote_port", \.remotePort, range: 1...65535, flag: "remote-port", "port for delivery to MX hosts (test set-ups change it)"),
        .optional("tls_cert", \.tlsCert, flag: "tls-cert", example: "/etc/tern/cert.pem",
                  "certificate chain (PEM) for STARTTLS and submissions listeners, with tls_key; read again on SIGHUP"),
        .optional("tls_key", \.tlsKey, flag: "tls-key", example: "/etc/tern/key.pem", "private key (PEM) of tls_cert"),
    ]

    static let delivery: [Setting] = [
        Setting(key: "delivery.enabled", kind: .boolean, flag: "no-deliver", help: "run the scheduler; false (or --no-deliver): accept and queue only",
                range: nil, defaultText: nil, example: nil, get: { .bool($0.deliver) },
                set: { s, v in
                    guard case .bool(let b) = v else { throw ConfigError("'delivery.enabled' must be true or false") }
                    s.deliver = b
                }),
        .int("delivery.max_connections", \.deliveryMaxConnections, range: 1...Int.max, "outbound connections in all"),
        .int("delivery.max_connections_per_destination", \.deliveryMaxPerDestination, range: 1...Int.max, "outbound connections to one domain"),
        .int("delivery.messages_per_connection", \.deliveryMessagesPerConnection, range: 1...Int.max, "messages one connection carries before it closes"),
        .int("delivery.connection_cache_time", \.connectionCacheMillis, unit: "seconds", scale: 1000,
             "how long an idle connection waits for the next message (0: close at once)"),
        .int("delivery.ready_recipients", \.readyRecipients, "new mail waiting in memory for a worker: recipients (0: off)…"),
        .int("delivery.ready_bytes", \.readyBytes, unit: "bytes", "…and body bytes; beyond either, mail is claimed from the database"),
        .int("delivery.body_memory", \.bodyMemory, unit: "bytes", range: 1...Int.max,
             "message bodies all outbound connections may hold read back from the database; beyond it a connection waits its turn"),
        .int("delivery.retry_first", \.retryFirst, unit: "seconds", range: 1...Int.max, "first retry delay; doubles each time…"),
        .int("delivery.retry_max", \.retryMax, unit: "seconds", range: 1...Int.max, "…up to this"),
        .int("delivery.max_queue_lifetime", \.maxQueueLifetime, unit: "seconds", range: 1...Int.max, "then a deferred recipient expires (4.4.7)"),
        .int("delivery.delay_warning", \.delayWarning, unit: "seconds", "when one delay DSN goes to the sender (0: never)"),
        .int("delivery.connect_timeout", \.connectTimeout, unit: "seconds", range: 1...Int.max, "TCP connect to an MX host"),
        .choice("delivery.tls_policy", \.tlsPolicy, flag: "tls-policy",
                "STARTTLS: none; may (when offered, unverified); require (always, unverified); verify (always, certificate checked)"),
        .optional("delivery.tls_ca_file", \.tlsCAFile, flag: "tls-ca-file", "trusted roots (PEM) for verify; none: the system's"),
        .bool("delivery.suppress_on_hard_bounce", \.suppressOnHardBounce, "a hard bounce of the suppress_categories adds the address to the suppression list"),
        .string("delivery.pool_header", \.poolHeader,
                "the header field that names a message's source pool (from submission, local, authenticated and trusted clients; removed from every message); empty: none"),
        .list("delivery.suppress_categories", \.suppressCategories, parse: { text in
            guard let c = BounceCategory(rawValue: text) else {
                throw ConfigError("'delivery.suppress_categories': \(text) is not one of \(BounceCategory.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            return c
        }, show: { $0.rawValue }, "bounce categories that suppress the address (docs/shaping.md lists them)"),
        .int("delivery.breaker_threshold", \.breakerPolicy.threshold, range: 1...Int.max, "connection failures in a row before an MX host cools down…"),
        .int("delivery.breaker_cooldown", \.breakerPolicy.baseCooldownMillis, unit: "seconds", scale: 1000, range: 1...Int.max,
             "…for this long, doubling while it keeps failing…"),
        .int("delivery.breaker_max_cooldown", \.breakerPolicy.maxCooldownMillis, unit: "seconds", scale: 1000, range: 1...Int.max, "…up to this"),
    ]

    static let limits: [Setting] = [
        .int("limits.max_message_size", \.maxMessageSize, unit: "bytes", range: 1...Int.max, flag: "max-message-size",
             "largest message accepted, advertised with SIZE"),
        .int("limits.max_recipients", \.maxRecipients, range: 1...Int.max, "recipients per message; then 452 4.5.3"),
        .int("limits.max_command_line", \.maxCommandLine, unit: "bytes", range: 512...Int.max, "command line length (RFC 5321 §4.5.3.1.4)"),
        .int("limits.max_text_line", \.maxTextLine, unit: "bytes", range: 1000...Int.max, "message text line length (RFC 5321 §4.5.3.1.6)"),
        .int("limits.max_errors", \.maxErrors, range: 1...Int.max, "error replies in a session before it is closed"),
        .int("limits.max_connections", \.maxConnections, range: 1...Int.max, "inbound connections in all"),
        .int("limits.max_connections_per_client", \.maxConnectionsPerClient, range: 1...Int.max, "inbound connections from one client"),
        .int("limits.client_ipv4_prefix", \.clientIPv4Prefix, range: 8...32, "what one client is for the per-client limits: an IPv4 /N…"),
        .int("limits.client_ipv6_prefix", \.clientIPv6Prefix, range: 16...128, "…and an IPv6 /N (a host has a whole /64)"),
        .int("limits.max_junk_commands", \.maxJunkCommands, range: 1...Int.max, "NOOP, RSET, VRFY, HELP and EXPN in a session; then each counts as an error"),
        .int("limits.max_commands", \.maxCommands, range: 10...Int.max, "commands in one connection"),
        .int("limits.max_session_time", \.maxSessionSeconds, unit: "seconds", range: 60...Int.max, "how long a connection may last"),
        .int("limits.message_memory", \.messageMemory, unit: "bytes", range: 1...Int.max,
             "message text all sessions may hold in memory; then 452 4.3.1"),
        .int("limits.max_hops", \.maxHops, range: 2...Int.max, "Received: fields a message may carry; then 554 5.4.6"),
        .choice("limits.bare_newline", \.bareNewline, "what listeners without their own do with a text line ending in a bare LF"),
        .int("limits.command_timeout", \.commandTimeout, unit: "seconds", range: 1...Int.max, "idle time between commands"),
        .int("limits.data_timeout", \.dataTimeout, unit: "seconds", range: 1...Int.max, "idle time inside DATA"),
        .int("limits.shutdown_grace", \.shutdownGrace, unit: "seconds", "sessions in progress may finish this long after SIGTERM"),
    ]

    static let tls: [Setting] = [
        Setting(key: "tls.min_version", kind: .choice(["1.2", "1.3"]), flag: nil, help: "the listeners' lowest TLS version",
                range: nil, defaultText: nil, example: nil,
                get: { .string($0.tlsProfile.minimumVersion == .tlsv13 ? "1.3" : "1.2") },
                set: { s, v in
                    switch v {
                    case .string("1.2"): s.tlsProfile.minimumVersion = .tlsv12
                    case .string("1.3"): s.tlsProfile.minimumVersion = .tlsv13
                    default: throw ConfigError("'tls.min_version' must be \"1.2\" or \"1.3\"")
                    }
                }),
        .string("tls.ciphers", \.tlsProfile.ciphers, "TLS 1.2 suites, OpenSSL syntax (TLS 1.3 suites are fixed)"),
    ]

    static let auth: [Setting] = [
        .int("auth.max_failures", \.authMaxFailures, range: 1...Int.max,
             "failed logins per client (IPv4 address, IPv6 /64) before 454 4.7.0…"),
        .int("auth.failure_window", \.authFailureWindow, unit: "seconds", range: 1...Int.max, "…until it has been quiet this long"),
    ]

    static let retention: [Setting] = [
        .int("retention.bodies", \.retention.bodyDays, unit: "days", "how long a finished message keeps its body"),
        .int("retention.history", \.retention.historyDays, unit: "days", "how long finished messages and their history are kept"),
        .int("retention.sweep_interval", \.retentionSweepSeconds, unit: "seconds", "between retention sweeps in tern serve (0: never)"),
    ]

    static let signing: [Setting] = [
        .list("signing.headers", \.signing.headers, parse: { $0 }, show: { $0 },
              "header fields a DKIM signature covers, each as often as it occurs"),
        .list("signing.over_sign", \.signing.overSigned, parse: { $0 }, show: { $0 },
              "fields signed once more than they occur, so that none can be added (RFC 6376 §8.15)"),
        Setting(key: "signing.canonicalization", kind: .choice(["relaxed/relaxed", "relaxed/simple", "simple/relaxed", "simple/simple"]),
                flag: nil, help: "header/body canonicalisation (RFC 6376 §3.4)", range: nil, defaultText: nil, example: nil,
                get: { .string("\($0.signing.headerCanon.rawValue)/\($0.signing.bodyCanon.rawValue)") },
                set: { s, v in
                    guard case .string(let text) = v, let slash = text.firstIndex(of: "/"),
                          let h = DKIMCanonicalization(rawValue: String(text[..<slash])),
                          let b = DKIMCanonicalization(rawValue: String(text[text.index(after: slash)...])) else {
                        throw ConfigError("'signing.canonicalization' must be HEADER/BODY, each relaxed or simple")
                    }
                    s.signing.headerCanon = h
                    s.signing.bodyCanon = b
                }),
        Setting(key: "signing.expiry", kind: .integer(unit: "seconds"), flag: nil, help: "how long a signature is valid (x=); 0: no expiry",
                range: nil, defaultText: nil, example: nil, get: { .int(Int($0.signing.expirySeconds ?? 0)) },
                set: { s, v in
                    guard case .int(let i) = v else { throw ConfigError("'signing.expiry' must be a non-negative integer") }
                    s.signing.expirySeconds = i == 0 ? nil : Int64(i)
                }),
        Setting(key: "signing.sign_as", kind: .text, flag: nil,
                help: "the signing domain for mail whose From: domain has no key of its own (tenants); none: such mail goes unsigned",
                range: nil, defaultText: "none", example: nil, get: { .string($0.signing.signAs ?? "") },
                set: { s, v in
                    guard case .string(let text) = v else { throw ConfigError("'signing.sign_as' must be a string") }
                    s.signing.signAs = text.isEmpty ? nil : text.lowercased()
                }),
    ]

    static let verify: [Setting] = [
        .choice("verify.policy", \.verifyPolicy,
                "relay listeners without their own verify: off, record (Authentication-Results: and the message row), enforce (also refuse DMARC p=reject with 550 5.7.1)"),
        .string("verify.authserv_id", \.authservID, defaultText: "hostname", "the name Authentication-Results: fields carry (RFC 8601 §2.5)"),
        .string("verify.public_suffix_list", \.publicSuffixList, "the Public Suffix List for DMARC's organisational domains (Debian package publicsuffix)"),
    ]

    /// Checks that involve two settings (each setting's own bounds are in its declaration).
    static let crossChecks: [(String, @Sendable (TernSettings) -> Bool)] = [
        ("limits.message_memory must be at least limits.max_message_size", { $0.messageMemory >= $0.maxMessageSize }),
        ("delivery.retry_first must be ≤ delivery.retry_max", { $0.retryFirst <= $0.retryMax }),
        ("delivery.breaker_cooldown must be ≤ delivery.breaker_max_cooldown",
         { $0.breakerPolicy.baseCooldownMillis <= $0.breakerPolicy.maxCooldownMillis }),
        ("retention.history must be at least retention.bodies", { $0.retention.historyDays >= $0.retention.bodyDays }),
        ("tls_cert and tls_key go together", { ($0.tlsCert == nil) == ($0.tlsKey == nil) }),
        ("http.tls_cert and http.tls_key go together", { ($0.httpTLSCert == nil) == ($0.httpTLSKey == nil) }),
        ("http.tls needs http.tls_cert and http.tls_key, or tls_cert and tls_key", { !$0.httpTLS || $0.httpTLSCert != nil || $0.tlsCert != nil }),
        ("hostname must not be empty", { !$0.hostname.isEmpty }),
    ]
}
