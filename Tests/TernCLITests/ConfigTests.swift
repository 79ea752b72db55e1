import Foundation
import Testing
@testable import TernCLI
import TernHTTP
import TernListener
import TernProtocol
import TernRouting
import TernScheduler
@testable import TernStore

@Suite struct ConfigTests {
    @Test func defaults() {
        let s = TernSettings()
        #expect(s.db == (getuid() == 0 ? "/var/lib/tern/tern.sqlite" : NSHomeDirectory() + "/.local/share/tern/tern.sqlite"))
        #expect(s.listen.map { "\($0.host):\($0.port)" } == ["127.0.0.1:2525"])
        #expect(s.trustedNetworks == IPNetwork.loopback)
        #expect(s.listenerConfig.session.maxCommandLine == 512)
        #expect(s.listenerConfig.commandTimeoutSeconds == 300)
        // Outbound: thousands of connections in all (issue 21), Postfix's 20 per destination.
        #expect(s.schedulerConfig.maxConnections == 4_000)
        #expect(s.schedulerConfig.maxConnectionsPerDestination == 20)
    }

    /// Outbound connections are lowered to what the open-file limit leaves
    /// beside the inbound ones and 256 others, never below 16.
    @Test func outboundConnectionsFitTheOpenFileLimit() {
        #expect(fittedOutbound(openFiles: 524_288, inbound: 1_000, outbound: 4_000) == 4_000)
        #expect(fittedOutbound(openFiles: 1_024, inbound: 1_000, outbound: 4_000) == 16)
        #expect(fittedOutbound(openFiles: 4_096, inbound: 1_000, outbound: 4_000) == 2_840)
        #expect(fittedOutbound(openFiles: 5_256, inbound: 1_000, outbound: 4_000) == 4_000)
        #expect(fittedOutbound(openFiles: Int.max, inbound: 1_000, outbound: 4_000) == 4_000)
    }

    @Test func fullTOMLFile() throws {
        var s = TernSettings()
        try s.apply(toml: """
            hostname = "mx.example.test"
            db = "/var/lib/tern/q.sqlite"
            listen = ["127.0.0.1:25", "[::1]:2525"]
            relay_domains = ["example.test", ".sub.example.test"]
            trusted_networks = ["10.0.0.0/8"]
            log_level = "debug"

            [limits]
            max_message_size = 1000000
            max_recipients = 50
            max_command_line = 1024
            max_text_line = 2000
            max_errors = 5
            max_connections = 10
            max_connections_per_client = 2
            command_timeout = 60
            data_timeout = 30
            shutdown_grace = 5
            """)
        #expect(s.hostname == "mx.example.test")
        #expect(s.listen.map { "\($0.host):\($0.port)" } == ["127.0.0.1:25", "::1:2525"])
        #expect(s.relayDomains == ["example.test", ".sub.example.test"])
        #expect(s.trustedNetworks == [IPNetwork("10.0.0.0/8")!])
        let l = s.listenerConfig
        #expect(l.session.maxMessageSize == 1_000_000 && l.session.maxRecipients == 50 && l.session.maxErrors == 5)
        #expect(l.session.maxCommandLine == 1024 && l.session.maxTextLine == 2000)
        #expect(l.maxConnections == 10 && l.maxConnectionsPerClient == 2)
        #expect(l.commandTimeoutSeconds == 60 && l.dataTimeoutSeconds == 30 && l.shutdownGraceSeconds == 5)
        #expect(l.session.relay.isRelayDomain("a.sub.example.test"))
    }

    @Test func listenerRolesAndAuthFromTOML() throws {
        var s = TernSettings()
        try s.apply(toml: """
            listen = ["127.0.0.1:25", "submission@127.0.0.1:587"]
            tls_cert = "c.pem"
            tls_key = "k.pem"
            [[listener]]
            address = "[::1]:465"
            role = "submissions"
            [[listener]]
            address = "127.0.0.1:5587"
            role = "submission"
            plaintext_auth = true
            [auth]
            max_failures = 4
            failure_window = 60
            """)
        #expect(s.listen == [ListenAddress("127.0.0.1", 25), ListenAddress("127.0.0.1", 587, role: .submission),
                             ListenAddress("::1", 465, role: .submissions), ListenAddress("127.0.0.1", 5587, role: .submission, plaintextAuth: true)])
        #expect(s.throttlePolicy.maxFailures == 4 && s.throttlePolicy.windowMillis == 60_000)
        try s.validateForServe()
        s.tlsCert = nil
        s.tlsKey = nil
        #expect(throws: ConfigError.self) { try s.validateForServe() } // submissions needs a certificate
    }

    /// The example configurations of the README and of docs/configuration.md are valid, key for key.
    @Test func theDocumentedExamplesParse() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        func example(_ file: String) throws -> TernSettings {
            let text = try String(contentsOf: root.appendingPathComponent(file), encoding: .utf8)
            let start = try #require(text.range(of: "```toml\n"))
            let end = try #require(text.range(of: "\n```", range: start.upperBound..<text.endIndex))
            var s = TernSettings()
            try s.apply(toml: String(text[start.upperBound..<end.lowerBound]))
            return s
        }
        let full = try example("docs/configuration.md")
        #expect(full.hostname == "mx.example.test")
        #expect(full.schedulerConfig.connectionCacheMillis == 2000 && full.schedulerConfig.readyBytes == 16_777_216)
        #expect(full.tlsProfile.minimumVersion == .tlsv12 && full.maxHops == 50)
        let short = try example("README.md")
        #expect(short.relayDomains == ["example.test"] && short.routes.count == 1)
    }

    @Test func retentionSuppressionAndBreakerFromTOML() throws {
        var s = TernSettings()
        try s.apply(toml: """
            [retention]
            bodies = 3
            history = 30
            sweep_interval = 600
            [delivery]
            suppress_on_hard_bounce = false
            breaker_threshold = 5
            breaker_cooldown = 30
            breaker_max_cooldown = 600
            connection_cache_time = 0
            ready_recipients = 100
            ready_bytes = 1048576
            body_memory = 67108864
            """)
        #expect(s.schedulerConfig.connectionCacheMillis == 0)
        #expect(s.schedulerConfig.readyRecipients == 100 && s.schedulerConfig.readyBytes == 1_048_576)
        #expect(s.schedulerConfig.bodyMemory == 64 << 20)
        #expect(s.retention.bodyDays == 3 && s.retention.historyDays == 30 && s.retentionSweepSeconds == 600)
        #expect(!s.schedulerConfig.policy.suppressOnHardBounce)
        #expect(s.breakerPolicy.threshold == 5 && s.breakerPolicy.baseCooldownMillis == 30_000 && s.breakerPolicy.maxCooldownMillis == 600_000)
    }

    @Test(arguments: [
        ("[retention]\nbodies = 10\nhistory = 5", "must be at least retention.bodies"),
        ("[retention]\nkeep = 1", "unknown key 'retention.keep'"),
        ("[delivery]\nbreaker_threshold = 0", "breaker_threshold must be"),
        ("[delivery]\nbody_memory = 0", "body_memory must be"),
        ("[[listener]]\nrole = \"submission\"", "needs 'address'"),
        ("[[listener]]\naddress = \"127.0.0.1:1\"\nrole = \"smtps\"", "bad listener role 'smtps'"),
        ("[[listener]]\naddress = \"127.0.0.1:1\"\nport = 2", "unknown key 'listener.port'"),
        ("[auth]\nmax_failures = 0", "at least 1"),
        ("[auth]\ndelay = 1", "unknown key 'auth.delay'"),
        ("hostnme = \"x\"", "unknown key 'hostnme'"),
        ("[limits]\nmax_size = 1", "unknown key 'limits.max_size'"),
        ("listen = \"127.0.0.1:25\"", "'listen' must be an array"),
        ("listen = [\"nocolon\"]", "bad listen address"),
        ("trusted_networks = [\"10.0.0.0/40\"]", "bad network"),
        ("[limits]\nmax_recipients = \"many\"", "must be a non-negative integer"),
        ("[limits]\nmax_command_line = 100", "at least 512"),
        ("log_level = \"loud\"", "log_level must be one of"),
        ("hostname = ", "TOML syntax error"),
    ])
    func badFilesAreExplained(_ toml: String, _ message: String) {
        var s = TernSettings()
        do {
            try s.apply(toml: toml)
            Issue.record("accepted: \(toml)")
        } catch {
            #expect("\(error)".contains(message), "\(error)")
        }
    }

    @Test func flagsOverrideTheFile() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tern-cfg-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let file = dir.appendingPathComponent("tern.toml")
        try Data("hostname = \"from-file.test\"\nrelay_domains = [\"file.test\"]\n[limits]\nmax_message_size = 5\n".utf8).write(to: file)
        let serve = try Serve.parse(["--config", file.path, "--hostname", "flag.test", "--listen", "127.0.0.1:0",
                                     "--max-message-size", "7000", "--trusted-network", "192.0.2.0/24", "--db", "/tmp/x.sqlite"])
        let s = try serve.resolved()
        #expect(s.hostname == "flag.test")
        #expect(s.relayDomains == ["file.test"]) // not overridden
        #expect(s.maxMessageSize == 7000)
        #expect(s.listen.map { $0.port } == [0])
        #expect(s.trustedNetworks == [IPNetwork("192.0.2.0/24")!])
        #expect(s.db == "/tmp/x.sqlite")
        #expect(throws: (any Error).self) { try Serve.parse(["--listen", "nope"]).resolved() }
    }

    @Test func listenForms() throws {
        #expect(try TernSettings.parseListen(":25") == ListenAddress("0.0.0.0", 25))
        #expect(try TernSettings.parseListen("[::1]:587") == ListenAddress("::1", 587))
        #expect(try TernSettings.parseListen("submission@127.0.0.1:5587") == ListenAddress("127.0.0.1", 5587, role: .submission))
        #expect(try TernSettings.parseListen("submissions@[::1]:465") == ListenAddress("::1", 465, role: .submissions))
        #expect(throws: ConfigError.self) { try TernSettings.parseListen("smtps@127.0.0.1:465") }
        #expect(throws: ConfigError.self) { try TernSettings.parseListen("127.0.0.1:99999") }
        #expect(throws: ConfigError.self) { try TernSettings.parseListen("[::1]587") }
    }
}

@Suite struct SendmailInputTests {
    @Test func normalisesLineEndsAndStopsAtALoneDot() {
        let p = SendmailInput.prepare(Array("Subject: x\n\nline1\r\n.\nafter\n".utf8), stopAtDot: true, readHeaders: false)
        #expect(String(decoding: p.body, as: UTF8.self) == "Subject: x\r\n\r\nline1\r\n")
        let all = SendmailInput.prepare(Array("a\n.\nb".utf8), stopAtDot: false, readHeaders: false)
        #expect(String(decoding: all.body, as: UTF8.self) == "a\r\n.\r\nb\r\n")
    }

    @Test func readsRecipientsFromHeadersAndDropsBcc() {
        let input = "From: me@x.test\nTo: \"Bob, B.\" <bob@x.test>, carol@y.test (Carol)\nCc: team: d@z.test, e@z.test;\nBcc: hidden@x.test,\n  hidden2@x.test\nSubject: s\n\nbody Bcc: no\n"
        let p = SendmailInput.prepare(Array(input.utf8), stopAtDot: true, readHeaders: true)
        #expect(p.headerRecipients == ["bob@x.test", "carol@y.test", "d@z.test", "e@z.test", "hidden@x.test", "hidden2@x.test"])
        let body = String(decoding: p.body, as: UTF8.self)
        #expect(!body.contains("hidden"))
        #expect(body.contains("Subject: s\r\n\r\nbody Bcc: no\r\n"))
    }
}

@Suite struct FormatterTests {
    @Test func jsonIsParseable() throws {
        let e = QueueEntry(queueID: "Q", receivedAt: 1_795_943_877_436, mailFrom: "", size: 3, recipientID: 9,
                                     address: "b@x.test", domain: "x.test", state: .queued, attempts: 0,
                                     nextAttemptAt: 1, lastCode: nil, lastEnhanced: nil, lastText: "a \"quoted\"\ntext")
        let json = QueueFormatter.json([e])
        let parsed = try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [[String: Any]]
        #expect(parsed?.first?["queue_id"] as? String == "Q")
        #expect(parsed?.first?["received"] as? String == "2026-11-29 09:17:57")
        #expect(parsed?.first?["last_text"] as? String == "a \"quoted\"\ntext")
        #expect(parsed?.first?["last_code"] is NSNull)
        let table = QueueFormatter.table([e])
        #expect(table.hasPrefix("QUEUE ID  RECEIVED (UTC)"))
        #expect(table.contains("<>"))
        #expect(table.hasSuffix("1 recipient\n"))
    }

    /// `[[provider]]` tables add to the shipped providers; bad ones are refused with the reason.
    @Test func providerTables() throws {
        var s = TernSettings()
        try s.apply(toml: "[[provider]]\nname = \"acme\"\nmx_suffixes = [\"mx.acme.example\"]")
        #expect(s.providers == [ProviderRule(name: "acme", mxSuffixes: ["mx.acme.example"])])
        #expect(s.providerTable.provider(forMX: "in1.mx.acme.example") == "acme")
        #expect(s.providerTable.provider(forMX: "aspmx.l.google.com") == "google")
        for (toml, message) in [
            ("[[provider]]\nmx_suffixes = [\"a.example\"]", "needs a 'name'"),
            ("[[provider]]\nname = \"x\"", "needs 'mx_suffixes'"),
            ("[[provider]]\nname = \"x\"\nmx_suffixes = [\"nodot\"]", "host name suffixes"),
            ("[[provider]]\nname = \"x\"\nmx_suffixes = [\"a.example\"]\nweight = 1", "unknown key 'provider.weight'"),
        ] {
            var bad = TernSettings()
            #expect(throws: ConfigError.self) { try bad.apply(toml: toml) }
            do { try bad.apply(toml: toml) } catch { #expect("\(error)".contains(message), "\(error)") }
        }
        // tern config show writes them back.
        #expect(s.showTOML().contains("[[provider]]"))
    }

    /// Issue 19: sources, pools, pool rules, warm-up plans and blocklists in TOML.
    @Test func sourcesPoolsWarmupAndBlocklists() throws {
        var s = TernSettings()
        try s.apply(toml: """
            [delivery]
            pool_header = "X-Pool"

            [[source]]
            name = "a"
            address = "127.0.0.2"
            ehlo = "a.mail.example.com"
            warmup = "default"

            [[source]]
            name = "b"
            address = "::1"

            [[source]]
            name = "c"
            address = "127.0.0.4"
            warmup = "slow"

            [[pool]]
            name = "main"
            sources = { a = 1, b = 3 }
            default = true

            [[pool]]
            name = "bulk"
            sources = ["c"]

            [[pool_rule]]
            pool = "bulk"
            sender_domain = ["news.example.com"]
            listener = "submission"

            [[warmup_plan]]
            name = "slow"
            daily = [10, 20, 40]
            hours = 8
            max_deferral_rate = 0.2

            [blocklist]
            zones = ["zen.example.org"]
            domain_zones = ["dbl.example.org"]
            interval = "30m"
            on_listed = "pause"
            """)
        #expect(s.sources.map(\.name) == ["a", "b", "c"] && s.sources[1].address.isIPv4 == false && s.sources[0].ehlo == "a.mail.example.com")
        let book = s.sourceBook
        #expect(book.defaultPool == "main" && book.pools["main"]?.members.map(\.weight) == [1, 3])
        #expect(s.poolChooser?.header == "X-Pool")
        #expect(s.poolChooser?.choose(mailFrom: "x@news.example.com", authUser: nil, origin: .submission, tag: nil, mayTag: true) == "bulk")
        #expect(s.poolChooser?.choose(mailFrom: "x@news.example.com", authUser: nil, origin: .smtp, tag: nil, mayTag: false) == nil)
        #expect(s.warmupPlans.first?.hourlyCap(day: 1) == 2 && s.warmupPlans.first?.maxDeferralRate == 0.2)
        #expect(s.blocklist.zones == ["zen.example.org"] && s.blocklist.intervalMillis == 1_800_000 && s.blocklist.onListed == .pause)
        // `tern config show` writes them back, and they read back the same.
        var again = TernSettings()
        try again.apply(toml: s.showTOML())
        #expect(again.sources == s.sources && again.pools == s.pools && again.poolRules == s.poolRules && again.warmupPlans == s.warmupPlans)
        #expect(again.blocklist == s.blocklist && again.poolHeader == "X-Pool")

        // Mistakes get a clear error.
        for (toml, message) in [
            ("[[source]]\nname = \"a\"\naddress = \"nope\"", "needs an 'address'"),
            ("[[source]]\nname = \"a\"\naddress = \"127.0.0.2\"\nwarmup = \"fast\"", "no warm-up plan 'fast'"),
            ("[[source]]\nname = \"a\"\naddress = \"127.0.0.2\"\n[[pool]]\nname = \"p\"\nsources = { x = 1 }\ndefault = true", "no [[source]] named 'x'"),
            ("[[source]]\nname = \"a\"\naddress = \"127.0.0.2\"\n[[pool]]\nname = \"p\"\nsources = { a = 1 }", "must be the default"),
            ("[[pool_rule]]\npool = \"nope\"\nuser = \"u\"", "no [[pool]] named 'nope'"),
            ("[[warmup_plan]]\nname = \"w\"\ndaily = []", "needs 'daily'"),
            ("[blocklist]\ninterval = \"10s\"", "at least a minute"),
            ("[blocklist]\nzones = [\"not a zone\"]", "is not a DNS zone"),
            ("[[source]]\nname = \"a\"\naddress = \"127.0.0.2\"\nweight = 3", "unknown key 'source.weight'"),
        ] {
            var bad = TernSettings()
            #expect(throws: ConfigError.self) { try bad.apply(toml: toml) }
            do { try bad.apply(toml: toml) } catch { #expect("\(error)".contains(message), "\(error)") }
        }
    }

    @Test func webhooksAndHTTPS() throws {
        let secretFile = FileManager.default.temporaryDirectory.appendingPathComponent("tern-secret-\(UUID().uuidString)")
        try Data("from-a-file-0123456789\n".utf8).write(to: secretFile)
        var s = TernSettings()
        try s.apply(toml: """
            tls_cert = "/etc/tern/cert.pem"
            tls_key = "/etc/tern/key.pem"

            [http]
            listen = "127.0.0.1:8025"
            tls = true

            [[webhook]]
            name = "crm"
            url = "https://crm.example.test/hook"
            secret = "0123456789abcdef"
            events = ["delivered", "bounced", "delivered"]
            timeout = "30s"
            batch = 10
            max_backoff = "1m"

            [[webhook]]
            url = "http://127.0.0.1:9000/x"
            secret_file = "\(secretFile.path)"
            events = ["throttled", "blocklisted"]
            """)
        #expect(s.httpTLS && s.httpTLSCert == nil)
        #expect(s.webhooks.count == 2)
        let crm = s.webhooks[0]
        #expect(crm.name == "crm" && crm.events == [.delivered, .bounced] && crm.timeoutSeconds == 30 && crm.batchSize == 10 && crm.maxBackoffSeconds == 60)
        #expect(crm.kinds == ["delivered", "bounced"])
        #expect(s.webhooks[1].name == "http://127.0.0.1:9000/x" && s.webhooks[1].secret == "from-a-file-0123456789")
        #expect(s.webhooks[1].kinds == ["shaping_throttled", "shaping_suspended", "blocklist_listed"])
        // `tern config show` writes them back (the file's path, not its secret).
        let shown = s.showTOML()
        #expect(shown.contains("secret_file = ") && !shown.contains("from-a-file"))
        var again = TernSettings()
        try again.apply(toml: shown)
        #expect(again.webhooks == s.webhooks && again.httpTLS)
        for (toml, message) in [
            ("[[webhook]]\nurl = \"ftp://x.test/\"\nsecret = \"0123456789abcdef\"\nevents = [\"delivered\"]", "needs a 'url'"),
            ("[[webhook]]\nurl = \"https://x.test/\"\nevents = [\"delivered\"]", "needs a 'secret'"),
            ("[[webhook]]\nurl = \"https://x.test/\"\nsecret = \"short\"\nevents = [\"delivered\"]", "at least 16"),
            ("[[webhook]]\nurl = \"https://x.test/\"\nsecret = \"0123456789abcdef\"\nevents = [\"opened\"]", "unknown event"),
            ("[[webhook]]\nurl = \"https://x.test/\"\nsecret = \"0123456789abcdef\"", "needs 'events'"),
            ("[[webhook]]\nurl = \"https://x.test/\"\nsecret = \"0123456789abcdef\"\nevents = [\"delivered\"]\nretries = 3", "unknown key 'webhook.retries'"),
            ("[[webhook]]\nurl = \"https://x.test/\"\nsecret = \"0123456789abcdef\"\nevents = [\"delivered\"]\n[[webhook]]\nurl = \"https://x.test/\"\nsecret = \"0123456789abcdef\"\nevents = [\"bounced\"]", "given twice"),
            ("[http]\ntls = true", "http.tls needs"),
        ] {
            var bad = TernSettings()
            do { try bad.apply(toml: toml); Issue.record("accepted: \(toml)") } catch { #expect("\(error)".contains(message), "\(error)") }
        }
    }

    @Test func shapingTablesRulesAndCategories() throws {
        var s = TernSettings()
        try s.apply(toml: """
            [delivery]
            suppress_categories = ["invalid_recipient"]

            [shaping]
            connections = 8
            messages_per_minute = 1000
            ramp_step = 25
            ramp_interval = 30

            [[shaping.destination]]
            name = "Google"
            connections = 4
            require_tls = true

            [[throttle_rule]]
            name = "acme"
            destination = "acme"
            code = "4xx"
            pattern = "slow down"
            threshold = "3 in 10m"
            factor = 0.25
            duration = "15m"

            [[throttle_rule]]
            name = "one-at-a-time"
            enhanced = "4.7.0"
            action = "limit"
            connections = 1
            duration = 60

            [[bounce_rule]]
            code = 550
            pattern = "mailbox is closed"
            category = "inactive_mailbox"
            """)
        let c = s.shapingConfig
        #expect(c.defaults == ShapingLimits(connections: 8, messagesPerMinute: 1000))
        #expect(c.destinations["google"] == ShapingLimits(connections: 4, requireTLS: true))
        #expect(c.rampStep == 0.25 && c.rampIntervalMillis == 30_000)
        #expect(c.rules.count == 2 + ShippedThrottleRules.all.count && c.rules[0].name == "acme")
        #expect(c.rules[0].threshold == 3 && c.rules[0].windowMillis == 600_000 && c.rules[0].durationMillis == 900_000)
        #expect(c.rules[0].action == .throttle(factor: 0.25) && c.rules[0].destination == "acme")
        #expect(c.rules[1].action == .limit(ShapingLimits(connections: 1)) && c.rules[1].durationMillis == 60_000)
        #expect(s.classifier.classify(SMTPReply(550, nil, "Sorry, this mailbox is closed")) == .inactiveMailbox)
        #expect(s.schedulerConfig.policy.suppressCategories == [.invalidRecipient])
        // tern config show writes them back, and what it writes reads the same.
        var again = TernSettings()
        try again.apply(toml: s.showTOML())
        #expect(again.shapingConfig.rules.map(\.name) == c.rules.map(\.name) && again.shapingDestinations == s.shapingDestinations)
        #expect(again.bounceRules.count == 1)
        for (toml, message) in [
            ("[[throttle_rule]]\nname = \"x\"", "matches every reply"),
            ("[[throttle_rule]]\nname = \"x\"\ncode = 421\nthreshold = \"5 per hour\"", "N in DURATION"),
            ("[[throttle_rule]]\nname = \"x\"\ncode = 421\nfactor = 2", "between 0 and 1"),
            ("[[throttle_rule]]\nname = \"x\"\ncode = 421\naction = \"limit\"", "needs limits"),
            ("[[throttle_rule]]\nname = \"x\"\npattern = \"(\"", "regular expression"),
            ("[[bounce_rule]]\ncode = 550\ncategory = \"spam\"", "must be one of"),
            ("[[shaping.destination]]\nname = \"x.test\"\nconections = 1", "unknown key 'shaping.destination.conections'"),
            ("[shaping]\nconections = 1", "unknown key 'shaping.conections'"),
            ("[delivery]\nsuppress_categories = [\"bogus\"]", "not one of"),
        ] {
            var bad = TernSettings()
            do { try bad.apply(toml: toml); Issue.record("accepted: \(toml)") } catch { #expect("\(error)".contains(message), "\(error)") }
        }
    }
}
