// Routing that learns, through the scheduler with a manual clock and the
// real SMTP client: the circuit breaker skips an MX host that keeps
// failing and tries it again after its cool-down, and MX answers come from
// the SQLite cache for their TTL.

import Foundation
import GRDB
import NIOPosix
import Testing
import TernDelivery
import TernProtocol
import TernRouting
@testable import TernScheduler
@testable import TernStore
import TernTestSupport

final class CountingDNS: DNSResolver, @unchecked Sendable {
    let lock = NSLock()
    var mxQueries = 0
    let records: [String: [MXRecord]]
    let hosts: [String: [IPAddress]]
    init(records: [String: [MXRecord]], hosts: [String: [IPAddress]]) {
        self.records = records
        self.hosts = hosts
    }
    func mx(_ domain: String) async -> DNSAnswer<[MXRecord]> {
        lock.withLock { mxQueries += 1 }
        return records[domain].map { .records($0) } ?? .nxdomain
    }
    func addresses(_ host: String) async -> DNSAnswer<[IPAddress]> { hosts[host].map { .records($0) } ?? .nxdomain }
}

@Suite(.serialized) struct LearningRoutingIntegrationTests {
    struct Rig {
        let store: Store
        let clock: ManualClock
        let dns: CountingDNS
        let book: HostHealthBook
        let scheduler: Scheduler
        let sink: SinkServer
        let group: MultiThreadedEventLoopGroup

        /// `down.test` has one MX (127.0.0.2, where nothing listens); `ok.test`
        /// has mx-a (down) and mx-b (the sink) at the same preference.
        static func make() async throws -> Rig {
            let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            let sink = try await SinkServer.start(group: group)
            let store = try Store(path: try tempFolder().appendingPathComponent("t.sqlite").path)
            let dns = CountingDNS(
                records: ["down.test": [MXRecord(preference: 10, host: "mx.down.test", ttl: 3600)],
                          "ok.test": [MXRecord(preference: 10, host: "mx-a.ok.test", ttl: 3600), MXRecord(preference: 10, host: "mx-b.ok.test", ttl: 3600)]],
                hosts: ["mx.down.test": [IPAddress("127.0.0.2")!], "mx-a.ok.test": [IPAddress("127.0.0.2")!],
                        "mx-b.ok.test": [IPAddress("127.0.0.1")!]])
            let clock = ManualClock()
            clock.advance(ms: 1_800_000_000_000)
            var policy = BreakerPolicy()
            policy.threshold = 3
            policy.baseCooldownMillis = 60_000
            let book = HostHealthBook(store: store, policy: policy, clock: clock)
            let resolver = CachingResolver(base: dns, cache: StoreMXCache(store: store), clock: { clock.now() })
            // No shuffling: mx-a is tried first while both are healthy.
            let router = Router(resolver: resolver, remotePort: sink.port, shuffle: { $0 })
            var client = ClientConfig(heloName: "mx.tern.test")
            client.setAllTimeouts(5)
            let agent = try SMTPDeliveryAgent(router: router, config: client, group: group, health: book)
            var config = SchedulerConfig(hostname: "mx.tern.test")
            config.policy.retry = RetrySchedule(firstDelayMillis: 1_000, maxDelayMillis: 1_000, jitter: 0)
            let scheduler = Scheduler(store: store, agent: agent, config: config, clock: clock, random: { 0.5 })
            return Rig(store: store, clock: clock, dns: dns, book: book, scheduler: scheduler, sink: sink, group: group)
        }

        /// The breaker's keys (address and port): the dead and the live endpoint.
        var down: String { "[127.0.0.2]:\(sink.port)" }
        var up: String { "[127.0.0.1]:\(sink.port)" }

        func submit(_ rcpt: String) async throws {
            let domain = String(rcpt.split(separator: "@")[1])
            _ = try await store.insertMessage(NewMessage(
                queueID: UUID().uuidString, receivedAt: clock.now(), mailFrom: "", body: Data("Subject: x\r\n\r\nx\r\n".utf8),
                clientAddress: nil, helo: nil, headerMessageID: nil, envID: nil, ret: nil, bodyType: nil, smtputf8: false,
                origin: "smtp", recipients: [NewRecipient(address: rcpt, domain: domain)]))
        }

        /// u@down.test submitted, then three passes a second apart: three
        /// connection failures, and the breaker opens.
        func openTheBreaker() async throws {
            try await submit("u@down.test")
            for _ in 0..<3 {
                await scheduler.runDue()
                clock.advance(ms: 1_000)
            }
        }

        func lastReply(_ rcpt: String) throws -> String {
            try store.read { db in try String.fetchOne(db, sql: "SELECT state || ' ' || last_code || ' ' || last_text FROM recipient WHERE address = ?", arguments: [rcpt]) ?? "" }
        }

        func close() async {
            store.close()
            await sink.stop()
            try? await group.shutdownGracefully()
        }
    }

    @Test func aFailingHostCoolsDownAndIsTriedAgainLater() async throws {
        let rig = try await Rig.make()
        // Three passes, three connection failures: then the breaker opens.
        try await rig.openTheBreaker()
        #expect(try rig.lastReply("u@down.test").hasPrefix("deferred 451"))
        let opened = try #require(rig.book.record(for: rig.down))
        #expect(opened.failures == 3 && opened.cooldownUntil == rig.clock.now() - 1_000 + 60_000)
        // The metrics' view: the endpoint with the MX name it failed under (its provider is looked up from that).
        #expect(rig.book.cooling(now: rig.clock.now()).map { "\($0.endpoint) \($0.mxHost ?? "-")" } == ["\(rig.down) mx.down.test"])
        // While it cools down nobody connects: the recipient is deferred with the reason.
        await rig.scheduler.runDue()
        #expect(rig.book.record(for: rig.down)?.failures == 3)
        #expect(try rig.lastReply("u@down.test").contains("cooling down after repeated failures"))
        // After the cool-down it is tried again (and, still down, cools down twice as long).
        rig.clock.advance(ms: 60_000)
        await rig.scheduler.runDue()
        let again = try #require(rig.book.record(for: rig.down))
        #expect(again.failures == 4 && again.cooldownUntil == rig.clock.now() + 120_000)
        // The table behind `tern stats routes` says so (written through the group commit).
        var stored: [StoredHostHealth] = []
        for _ in 0..<100 {
            stored = try rig.store.coolingHosts(now: rig.clock.now())
            if stored.first?.failures == 4 { break }
            try await Task.sleep(for: .milliseconds(10))
        }
        #expect(stored.map(\.host) == [rig.down] && stored.first?.failures == 4)
        #expect(stored.first?.lastError?.hasPrefix("451") == true || stored.first?.lastError?.hasPrefix("421") == true)
        await rig.close()
    }

    /// `tern queue flush` (QueueAdmin.flush, from another process) ends the
    /// cool-downs, as Postfix's flush ends its dead-destination cache: the
    /// server takes the host back at its next look, instead of deferring
    /// the flushed mail again unsent (found by the backlog benchmark).
    @Test func anOperatorsFlushEndsTheCoolDown() async throws {
        let rig = try await Rig.make()
        try await rig.openTheBreaker()
        let opened = try #require(rig.book.record(for: rig.down))
        #expect(opened.failures == 3 && opened.coolingDown(at: rig.clock.now()))
        // The write-through has landed before the operator acts.
        for _ in 0..<100 where try rig.store.coolingHosts(now: rig.clock.now()).isEmpty { try await Task.sleep(for: .milliseconds(10)) }
        let other = try Store(path: rig.store.path) // the CLI's own connection
        _ = try await QueueAdmin(store: other, hostname: "mx.tern.test").flush(.all, now: rig.clock.now())
        other.close()
        #expect(try rig.store.coolingHosts(now: rig.clock.now()).isEmpty)
        // The next pass tries the host (still down: one failure, no cool-down yet).
        rig.clock.advance(ms: 5_000)
        await rig.scheduler.runDue()
        let after = try #require(rig.book.record(for: rig.down))
        #expect(after.failures == 1 && after.cooldownUntil == nil, "\(after)")
        #expect(try !rig.lastReply("u@down.test").contains("cooling down"))
        await rig.close()
    }

    @Test func aHealthierHostGoesFirstAndTheMXAnswerIsCached() async throws {
        let rig = try await Rig.make()
        try await rig.submit("a@ok.test")
        await rig.scheduler.runDue()
        // mx-a (first) failed, mx-b delivered.
        #expect(try rig.lastReply("a@ok.test").hasPrefix("delivered 250"))
        #expect(rig.book.record(for: rig.down)?.failures == 1 && rig.book.record(for: rig.up)?.successes == 1)
        // Next message: mx-b goes first (fewer failures at the same preference), mx-a is not tried.
        try await rig.submit("b@ok.test")
        await rig.scheduler.runDue()
        #expect(try rig.lastReply("b@ok.test").hasPrefix("delivered 250"))
        #expect(rig.book.record(for: rig.down)?.failures == 1)
        #expect(rig.sink.connections == 2)
        // One DNS question for both messages: the second plan read the SQLite cache.
        #expect(rig.dns.mxQueries == 1)
        let cached = try #require(try rig.store.cachedMX("ok.test", now: rig.clock.now()))
        #expect(cached.status == "ok" && cached.records.map(\.host) == ["mx-a.ok.test", "mx-b.ok.test"])
        #expect(cached.expiresAt == rig.clock.now() + 3_600_000)
        // Past the TTL the resolver is asked again.
        rig.clock.advance(ms: 3_600_001)
        try await rig.submit("c@ok.test")
        await rig.scheduler.runDue()
        #expect(rig.dns.mxQueries == 2)
        await rig.close()
    }
}
