import Foundation
import GRDB
import NIOCore
import Synchronization
import Testing
import TernDelivery
import TernIntake
import TernProtocol
import TernRouting
import TernScheduler
import TernTestSupport
@testable import TernStore

/// Issue 19 end to end over real SMTP: sources bound to loopback addresses
/// (127.0.0.2, 127.0.0.3: all of 127.0.0.0/8 is this host's), a sink that
/// records each connection's peer address and EHLO name.
@Suite(.serialized) struct SourcesTests {
    static func source(_ name: String, _ address: String) -> OutboundSource {
        OutboundSource(name: name, address: IPAddress(address)!, ehlo: "\(name).out.test")
    }

    /// Sends `n` messages to `domain`, one per client connection.
    static func send(_ server: TestServer, _ n: Int, to domain: String, from: String = "news@sender.test", header: String = "") throws {
        for i in 0..<n {
            let c = try server.greetedClient()
            #expect(try c.sendMessage(from: from, to: ["u\(i)@\(domain)"], body: "\(header)Subject: \(i)\r\n\r\nhi\r\n").code == 250)
        }
    }

    @Test func poolWeightsHoldAndEachSourceLeavesFromItsAddressWithItsName() async throws {
        let sink = try await SinkServer.start(group: server0Group)
        defer { Task { await sink.stop() } }
        let a = SourcesTests.source("a", "127.0.0.2"), b = SourcesTests.source("b", "127.0.0.3")
        let book = SourceBook(sources: [a, b], pools: [SourcePool(name: "main", members: [(a, 1), (b, 3)])], defaultPool: "main")
        let setup = DeliverySetup(routes: [StaticRoute(domain: "dest.test", host: "127.0.0.1", port: sink.port)], edit: { sc in
            sc.sources = book
            sc.messagesPerConnection = 4
        })
        let server = try await TestServer.start(delivery: setup)
        defer { Task { await server.stop() } }
        try SourcesTests.send(server, 200, to: "dest.test")
        #expect(await eventually { sink.count == 200 })
        let byPeer = Dictionary(grouping: sink.messages, by: \.peer).mapValues(\.count)
        // 1:3 over 200 messages, within a connection's load (4 messages) per source.
        #expect(Set(byPeer.keys) == ["127.0.0.2", "127.0.0.3"], "\(byPeer)")
        #expect(abs((byPeer["127.0.0.2"] ?? 0) - 50) <= 8, "\(byPeer)")
        // Each source introduces itself with its own EHLO name.
        #expect(sink.messages.allSatisfy { ($0.peer == "127.0.0.2" && $0.helo == "a.out.test") || ($0.peer == "127.0.0.3" && $0.helo == "b.out.test") })
        // The attempts record the source and the address it left from.
        #expect(await eventually { try server.count("SELECT count(*) FROM attempt WHERE outcome = 'delivered'") == 200 })
        #expect(try server.count("SELECT count(*) FROM attempt WHERE source = 'a' AND source_address = '127.0.0.2'") == byPeer["127.0.0.2"])
        #expect(try server.count("SELECT count(*) FROM attempt WHERE source = 'b' AND source_address = '127.0.0.3'") == byPeer["127.0.0.3"])
        // tern stats sources reports them by source and provider.
        let stats = try runProgram(try ternBinary(), ["stats", "sources", "--format", "json", "--db", server.dbPath])
        #expect(stats.status == 0, "\(stats.stderr)")
        let rows = (try JSONSerialization.jsonObject(with: Data(stats.stdout.utf8)) as? [String: Any])?["sources"] as? [[String: Any]] ?? []
        #expect(rows.count == 2 && rows.allSatisfy { $0["provider"] as? String == "dest.test" && $0["delivered_rate"] as? Double == 1 })
        #expect(rows.first { $0["source"] as? String == "a" }?["attempts"] as? Int == byPeer["127.0.0.2"])
        let csv = try runProgram(try ternBinary(), ["stats", "sources", "--format", "csv", "--db", server.dbPath])
        #expect(csv.stdout.hasPrefix("source,address,provider,attempts,delivered,deferred,bounced,"), "\(csv.stdout)")
    }

    /// Warm-up over real SMTP on a manual clock: a sink that answers with
    /// Yahoo's block text makes the plan step back; healthy days advance.
    @Test func warmupFollowsWhatTheSinkAnswers() async throws {
        let sink = try await SinkServer.start(group: server0Group)
        defer { Task { await sink.stop() } }
        let w = SourcesTests.source("w", "127.0.0.2")
        let book = SourceBook(sources: [w], pools: [], defaultPool: nil)
        var p1 = WarmupPlan(name: "t", daily: [4, 8, 16], hours: 1)
        p1.minSample = 4
        let plan = p1
        // Ahead of the wall clock that intake stamps queued rows with, so that they are due.
        let clock = ManualClock(nowMillis() + 600_000)
        let gateBox = Mutex<ShapingGate?>(nil)
        let setup = DeliverySetup(routes: [StaticRoute(domain: "dest.test", host: "127.0.0.1", port: sink.port)], edit: { sc in
            sc.sources = book
            sc.idleWakeMillis = 100
            sc.policy.retry = RetrySchedule(firstDelayMillis: 3_600_000, maxDelayMillis: 3_600_000, jitter: 0)
        }, gate: { store in
            var config = ShapingConfig()
            config.rules = []
            let g = ShapingGate(config: config, sources: ["w"], warmupPlans: [plan], warming: ["w": "t"], store: store)
            try? g.load(now: clock.now())
            gateBox.withLock { $0 = g }
            return g
        }, clock: clock)
        let server = try await TestServer.start(delivery: setup)
        defer { Task { await server.stop() } }
        let gate = try #require(gateBox.withLock { $0 })
        // Day 1: 4 a day; 6 submitted, 4 delivered from 127.0.0.2, 2 wait untried.
        try SourcesTests.send(server, 6, to: "dest.test")
        #expect(await eventually { sink.count == 4 })
        try await Task.sleep(for: .milliseconds(300))
        #expect(sink.count == 4 && sink.messages.allSatisfy { $0.peer == "127.0.0.2" })
        #expect(try server.count("SELECT count(*) FROM recipient WHERE (state = 'queued' OR state = 'inflight') AND attempts = 0") == 2)
        // A healthy day: day 2 (8 a day); the 2 waiting go, and Yahoo's block for 4 of the 8.
        clock.advance(ms: Warmup.dayMillis)
        gate.advance(now: clock.now())
        #expect(gate.warmupSnapshot().progress["w"]?.day == 2)
        server.scheduler?.wake()
        #expect(await eventually { sink.count == 6 })
        for i in 0..<4 {
            let c = try server.greetedClient()
            #expect(try c.sendMessage(from: "news@sender.test", to: ["tss09-\(i)@dest.test"], body: "Subject: b\r\n\r\nhi\r\n").code == 250)
        }
        #expect(await eventually { try server.count("SELECT count(*) FROM recipient WHERE state = 'bounced' AND address LIKE 'tss09%'") == 4 },
                "\((try? server.store.read { db in try Row.fetchAll(db, sql: "SELECT address, state, attempts, last_text FROM recipient") }) ?? [])")
        #expect(try server.count("SELECT count(*) FROM attempt WHERE code = 553 AND category = 'reputation' AND source = 'w'") == 4,
                "\((try? server.store.read { db in try Row.fetchAll(db, sql: "SELECT code, category, source, text FROM attempt") }) ?? [])")
        // Their DSNs, to a domain that does not exist, bounce on the same day.
        #expect(await eventually { try server.count("SELECT count(*) FROM recipient WHERE address = 'news@sender.test' AND state = 'bounced'") == 4 })
        // The day ends: 4 blocks in 6 answers: back to day 1.
        clock.advance(ms: Warmup.dayMillis)
        gate.advance(now: clock.now())
        let p = try #require(gate.warmupSnapshot().progress["w"])
        #expect(p.day == 1 && p.verdict == .steppedBack && p.reason?.contains("4 of 6 refused for reputation") == true, "\(p)")
        await gate.flush(now: clock.now())
        #expect(try server.count("SELECT count(*) FROM event WHERE kind = 'warmup_stepped_back' AND json_extract(detail, '$.destinations.\"dest.test\".blocked') = 4") == 1)
        // The DSNs' failures did not count: no server answered them.
        #expect(try server.count("SELECT count(*) FROM event WHERE kind LIKE 'warmup_%' AND json_extract(detail, '$.destinations.\"sender.test\"') IS NOT NULL") == 0)
    }

    @Test func shapingLimitsHoldPerSource() async throws {
        let sink = try await SinkServer.start(group: server0Group)
        defer { Task { await sink.stop() } }
        let a = SourcesTests.source("a", "127.0.0.2"), b = SourcesTests.source("b", "127.0.0.3")
        let book = SourceBook(sources: [a, b], pools: [SourcePool(name: "main", members: [(a, 1), (b, 1)])], defaultPool: "main")
        var shaping = ShapingConfig()
        shaping.destinations["dest.test"] = ShapingLimits(connections: 1, messagesPerConnection: 3)
        let config = shaping
        let setup = DeliverySetup(routes: [StaticRoute(domain: "dest.test", host: "127.0.0.1", port: sink.port)], edit: { sc in
            sc.sources = book
            sc.connectionCacheMillis = 200
        }, gate: { store in ShapingGate(config: config, sources: ["a", "b"], store: store) })
        let server = try await TestServer.start(delivery: setup)
        defer { Task { await server.stop() } }
        try SourcesTests.send(server, 60, to: "dest.test")
        #expect(await eventually { sink.count == 60 })
        let stats = sink.providerStats
        // One connection at a time from each source (the limit is per source and destination)…
        #expect(stats.peakByPeer["127.0.0.2"] == 1 && stats.peakByPeer["127.0.0.3"] == 1, "\(stats.peakByPeer)")
        // …and each carried at most 3 messages: at least 20 connections in all.
        #expect((stats.connectionsByPeer.values.reduce(0, +)) >= 20, "\(stats.connectionsByPeer)")
    }

    @Test func aSourceWhoseAddressCannotBeBoundLeavesRotationWithAnEvent() async throws {
        let sink = try await SinkServer.start(group: server0Group)
        defer { Task { await sink.stop() } }
        // 192.0.2.55 (TEST-NET-1) is on no interface of this host: bind() fails, nothing is sent.
        let gone = SourcesTests.source("gone", "192.0.2.55"), b = SourcesTests.source("b", "127.0.0.3")
        let book = SourceBook(sources: [gone, b], pools: [SourcePool(name: "main", members: [(gone, 5), (b, 1)])], defaultPool: "main")
        let setup = DeliverySetup(routes: [StaticRoute(domain: "dest.test", host: "127.0.0.1", port: sink.port)], edit: { sc in
            sc.sources = book
        })
        let server = try await TestServer.start(delivery: setup)
        defer { Task { await server.stop() } }
        try SourcesTests.send(server, 12, to: "dest.test")
        #expect(await eventually { sink.count == 12 })
        #expect(sink.messages.allSatisfy { $0.peer == "127.0.0.3" })
        #expect(book.holds["gone"]?[.bind] != nil)
        #expect(try server.count("SELECT count(*) FROM event WHERE kind = 'source_unavailable' AND json_extract(detail, '$.source') = 'gone'") == 1)
        #expect(try server.count("SELECT count(*) FROM source_status WHERE source = 'gone' AND bind_error LIKE 'cannot bind 192.0.2.55%'") == 1)
        // Nothing was tried from it: no attempt, no deferral, no bounce.
        #expect(try server.count("SELECT count(*) FROM attempt WHERE source = 'gone'") == 0)
        #expect(await eventually { try server.count("SELECT count(*) FROM recipient WHERE state = 'delivered'") == 12 }) // settled after the sink counted
    }

    /// A dual-stack pool: an IPv6 source cannot reach an IPv4-only host; the
    /// IPv4 source takes that domain's mail, nothing is deferred. A pool
    /// with only the IPv6 source defers with a clear reply.
    @Test func aSourceOfTheOtherAddressFamilyLeavesTheDomainToTheOthers() async throws {
        let sink = try await SinkServer.start(group: server0Group)
        defer { Task { await sink.stop() } }
        let v4 = SourcesTests.source("v4", "127.0.0.2"), v6 = SourcesTests.source("v6", "::1")
        let book = SourceBook(sources: [v4, v6], pools: [SourcePool(name: "main", members: [(v4, 1), (v6, 5)]),
                                                         SourcePool(name: "six", members: [(v6, 1)])], defaultPool: "main")
        let chooser = PoolChooser(rules: [PoolRule(pool: "six", senderDomains: ["six.test"])], pools: ["main", "six"])
        let setup = DeliverySetup(routes: [StaticRoute(domain: "dest.test", host: "127.0.0.1", port: sink.port)], edit: { sc in sc.sources = book })
        let server = try await TestServer.start(delivery: setup, pools: chooser)
        defer { Task { await server.stop() } }
        try SourcesTests.send(server, 6, to: "dest.test")
        #expect(await eventually { sink.count == 6 })
        #expect(sink.messages.allSatisfy { $0.peer == "127.0.0.2" })
        #expect(try server.count("SELECT count(*) FROM attempt WHERE outcome = 'deferred'") == 0)
        try SourcesTests.send(server, 1, to: "dest.test", from: "x@six.test")
        #expect(await eventually {
            try server.count("SELECT count(*) FROM recipient WHERE pool = 'six' AND state = 'deferred' AND last_text LIKE 'no MX host of dest.test has an IPv6 address for source v6%'") == 1
        })
        #expect(try server.count("SELECT count(*) FROM attempt WHERE source = 'v6'") == 1)
    }

    @Test func poolRulesAndTheHeaderTagChooseTheSources() async throws {
        let sink = try await SinkServer.start(group: server0Group)
        defer { Task { await sink.stop() } }
        let a = SourcesTests.source("a", "127.0.0.2"), b = SourcesTests.source("b", "127.0.0.3"), c = SourcesTests.source("c", "127.0.0.4")
        let book = SourceBook(sources: [a, b, c], pools: [SourcePool(name: "main", members: [(a, 1)]), SourcePool(name: "bulk", members: [(b, 1)]),
                                                         SourcePool(name: "vip", members: [(c, 1)])], defaultPool: "main")
        let chooser = PoolChooser(rules: [PoolRule(pool: "bulk", senderDomains: ["news.test"])], pools: ["main", "bulk", "vip"])
        let setup = DeliverySetup(routes: [StaticRoute(domain: "dest.test", host: "127.0.0.1", port: sink.port)], edit: { sc in sc.sources = book })
        let server = try await TestServer.start(delivery: setup, pools: chooser)
        defer { Task { await server.stop() } }
        try SourcesTests.send(server, 3, to: "dest.test", from: "x@plain.test")
        try SourcesTests.send(server, 3, to: "dest.test", from: "x@news.test")
        try SourcesTests.send(server, 3, to: "dest.test", from: "x@news.test", header: "X-Tern-Pool: vip\r\n")
        #expect(await eventually { sink.count == 9 })
        let byPeer = Dictionary(grouping: sink.messages, by: \.peer).mapValues(\.count)
        #expect(byPeer == ["127.0.0.2": 3, "127.0.0.3": 3, "127.0.0.4": 3], "\(byPeer)")
        // The tag never leaves.
        #expect(sink.messages.allSatisfy { !$0.data.lowercased().contains("x-tern-pool") })
        #expect(try server.count("SELECT count(*) FROM recipient WHERE pool = 'vip'") == 3)
    }
}

/// Issue 19 through the binary: `tern warmup`, `tern blocklist check`,
/// `tern stats routes`, and a running gate picking up operators' changes.
@Suite(.serialized) struct SourcesCommandTests {
    @Test func operatorsSteerWarmupAndCheckBlocklistsFromTheCommandLine() async throws {
        let silent = SilentUDPServer()
        let listed = BlocklistMonitor.queryName(IPAddress("127.0.0.2")!, zone: "bl.test")
        let dns = try TestDNS(txt: [(listed, "Listed for spam")], a: [(listed, "127.0.0.2"), ("out.test.dbl.test", "127.0.1.2")],
                              forward: [("slow.test", "127.0.0.1#\(silent.port)")])
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tern-sources-cli-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let db = dir.appendingPathComponent("tern.sqlite").path
        let config = dir.appendingPathComponent("tern.toml").path
        try """
            db = "\(db)"
            resolvers = ["127.0.0.1:\(dns.port)"]

            [[source]]
            name = "a"
            address = "127.0.0.2"
            ehlo = "a.out.test"
            warmup = "default"

            [[source]]
            name = "b"
            address = "127.0.0.3"

            [[pool]]
            name = "main"
            sources = { a = 1, b = 1 }
            default = true

            [blocklist]
            zones = ["bl.test", "slow.test"]
            domain_zones = ["dbl.test"]
            on_listed = "pause"
            """.write(toFile: config, atomically: true, encoding: .utf8)
        let tern = try ternBinary()
        func run(_ args: [String]) throws -> ProcessResult { try runProgram(tern, args + ["--config", config]) }
        #expect(try run(["migrate"]).status == 0)
        func status() throws -> [String: Any] {
            let r = try run(["warmup", "status", "--format", "json"])
            #expect(r.status == 0, "\(r.stderr)")
            return try #require((try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]])?.first)
        }
        // Before the server ever ran: not started; b has no plan and is not listed.
        var s = try status()
        #expect(s["source"] as? String == "a" && s["day"] is NSNull && s["day_cap"] as? Int == 50)
        #expect(try run(["warmup", "pause", "a"]).stderr.contains("has not started"))
        let started = try run(["warmup", "start", "a"])
        #expect(started.status == 0 && started.stdout.contains("day 1"), "\(started.stderr)")
        #expect(try run(["warmup", "skip-to", "5", "a"]).status == 0)
        s = try status()
        #expect(s["day"] as? Int == 5 && s["day_cap"] as? Int == 200 && s["hour_cap"] as? Int == 9 && s["status"] as? String == "active")
        #expect(try run(["warmup", "pause", "a"]).status == 0)
        #expect(try status()["status"] as? String == "paused")
        #expect(try run(["warmup", "resume", "a"]).status == 0)
        #expect(try status()["status"] as? String == "active")
        let table = try run(["warmup", "status"])
        #expect(table.stdout.contains("a (127.0.0.2): plan default, day 5 of 30, active") && table.stdout.contains("200 a day, 9 an hour"), "\(table.stdout)")
        #expect(try run(["warmup", "start", "b"]).stderr.contains("has no warm-up plan"))
        #expect(try run(["warmup", "start", "nope"]).status == 64)
        let store = try Store(path: db)
        #expect(try store.read { db in try String.fetchAll(db, sql: "SELECT kind FROM event WHERE kind LIKE 'warmup_%' ORDER BY id") }
            == ["warmup_started", "warmup_skipped", "warmup_paused", "warmup_resumed"])
        #expect(try store.read { db in try Int.fetchOne(db, sql: """
            SELECT count(*) FROM event WHERE kind LIKE 'warmup_%' AND json_extract(detail, '$.source') = 'a' AND json_extract(detail, '$.by') = 'operator'
            """) } == 4)
        #expect(try run(["warmup", "status"]).stdout.contains(" resumed"))
        store.close()

        // The blocklist check: a is listed on bl.test (exit 1), slow.test does not answer.
        let check = try run(["blocklist", "check", "--format", "json"])
        #expect(check.status == 1, "\(check.stderr)")
        let rows = try JSONSerialization.jsonObject(with: Data(check.stdout.utf8)) as? [[String: Any]] ?? []
        let aOnBL = rows.first { $0["source"] as? String == "a" && $0["zone"] as? String == "bl.test" }
        #expect(aOnBL?["listed"] as? Bool == true && aOnBL?["address"] as? String == "127.0.0.2" && aOnBL?["reason"] as? String == "Listed for spam")
        #expect(rows.first { $0["source"] as? String == "b" && $0["zone"] as? String == "bl.test" }?["listed"] as? Bool == false)
        #expect(rows.filter { $0["zone"] as? String == "slow.test" }.allSatisfy { $0["listed"] is NSNull && $0["error"] is String })
        // a's EHLO name a.out.test is looked up by its registered domain (the Public Suffix List's).
        let dbl = rows.first { $0["zone"] as? String == "dbl.test" }
        #expect(dbl?["query"] as? String == "out.test" && dbl?["listed"] as? Bool == true && dbl?["code"] as? String == "127.0.1.2", "\(rows)")
        let one = try run(["blocklist", "check", "--source", "b"])
        #expect(one.status == 0 && one.stdout.contains("bl.test") && !one.stdout.contains("127.0.0.2 "), "\(one.stdout)")
        // The status shows where operators look.
        #expect(try run(["warmup", "status"]).stdout.contains("LISTED on bl.test"))
        let all = try JSONSerialization.jsonObject(with: Data(try run(["warmup", "status", "--format", "json"]).stdout.utf8)) as? [[String: Any]] ?? []
        #expect(all.count == 2 && all[1]["source"] as? String == "b" && all[1]["plan"] is NSNull && (all[1]["listed"] as? [Any])?.isEmpty == true)
        #expect(try run(["warmup", "status", "--source", "b"]).stdout.contains("b (127.0.0.3): no warm-up plan"))
        let routes = try run(["stats", "routes"])
        #expect(routes.stdout.split(separator: "\n").contains { $0.hasPrefix("a ") && $0.contains("listed on bl.test (127.0.0.2)") }, "\(routes.stdout)")

        // A running server's gate takes an operator's change within its next poll.
        let store2 = try Store(path: db)
        defer { store2.close() }
        let gate = ShapingGate(config: ShapingConfig(), sources: ["a", "b"], warming: ["a": "default"], store: store2)
        try gate.load(now: nowMillis())
        #expect(gate.warmupSnapshot().progress["a"]?.day == 5)
        #expect(try run(["warmup", "skip-to", "7", "a"]).status == 0)
        gate.pollWarmup()
        #expect(gate.warmupSnapshot().progress["a"]?.day == 7)
        // Its own later writes do not undo the operator's.
        await gate.flush(now: nowMillis())
        #expect(try status()["day"] as? Int == 7)
    }
}
