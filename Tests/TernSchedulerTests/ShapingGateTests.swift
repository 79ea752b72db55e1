import Foundation
import GRDB
import Testing
import TernDelivery
import TernProtocol
import TernRouting
@testable import TernScheduler
@testable import TernStore

/// Issue 18: the shaping gate in the scheduler, on a manual clock: limits
/// shared by a provider's domains, mail over a limit waiting (never bounced),
/// other destinations flowing, rules reacting to replies, state surviving a
/// restart, and operators' overrides picked up while running.
@Suite struct ShapingGateTests {
    static let bigmail = ProviderTable(custom: [ProviderRule(name: "bigmail", mxSuffixes: ["bigmail.test"])])

    func gate(_ store: Store, _ edit: (inout ShapingConfig) -> Void) -> ShapingGate {
        var c = ShapingConfig()
        c.rules = []
        edit(&c)
        return ShapingGate(config: c, providers: ShapingGateTests.bigmail, store: store)
    }

    func harness(_ gate: @escaping (Store) -> ShapingGate) throws -> (Harness, ShapingGate) {
        var made: ShapingGate? = nil
        let h = try Harness { config in config.gate = OpenGate() }
        let g = gate(h.store)
        made = g
        let h2 = try Harness(store: h.store, clock: h.clock) { $0.gate = made! }
        return (h2, g)
    }

    @Test func aProvidersDomainsShareItsLimitsAndMailOverThemWaits() async throws {
        let (h, g) = try harness { store in
            self.gate(store) { $0.destinations["bigmail"] = ShapingLimits(connections: 1, messagesPerMinute: 2) }
        }
        // The MX cache knows both domains are bigmail's.
        for d in ["one.bigmail.test", "two.bigmail.test"] {
            try await h.store.cacheMX(d, CachedMX(status: "ok", records: [(10, "mx1.bigmail.test")], expiresAt: h.clock.now() + 86_400_000),
                                      now: h.clock.now())
        }
        try g.load(now: h.clock.now())
        #expect(g.destination(for: "one.bigmail.test") == "bigmail")
        for i in 0..<3 { try await h.submit(["ok\(i)@one.bigmail.test"]); try await h.submit(["ok\(i)@two.bigmail.test"]) }
        for i in 0..<4 { try await h.submit(["ok\(i)@free.test"]) }
        await h.scheduler.runDue()
        // Two tokens for bigmail in all, one connection at a time; free.test is not held by it.
        let toBig = { h.agent.sent.filter { $0.envelope.recipients[0].address.contains("bigmail") }.count }
        #expect(toBig() == 2)
        #expect(h.agent.sent.filter { $0.envelope.recipients[0].address.hasSuffix("free.test") }.count == 4)
        #expect(h.agent.maxOpen["one.bigmail.test", default: 0] + h.agent.maxOpen["two.bigmail.test", default: 0] <= 2)
        // Claims follow the tokens: at most one recipient per pass is claimed and given back.
        #expect(h.scheduler.givenBackPaced.load(ordering: .relaxed) <= 1)
        #expect(g.allowance(SendRequest(.message, destination: "one.bigmail.test"), now: h.clock.now()) == 0)
        #expect(g.allowance(SendRequest(.message, destination: "free.test"), now: h.clock.now()) == nil)
        // What waits was not tried: no attempt, no bounce, no deferral.
        #expect(try h.rows("SELECT count(*) FROM recipient WHERE domain LIKE '%bigmail.test' AND attempts = 0 AND state = 'queued'").first?[0] == 4)
        #expect(try h.rows("SELECT count(*) FROM recipient WHERE state = 'bounced' OR state = 'deferred'").first?[0] == 0)
        // One token every 30 s.
        h.clock.advance(seconds: 30)
        await h.scheduler.runDue()
        #expect(toBig() == 3)
        // The bucket holds two at most, however long it waited.
        h.clock.advance(seconds: 90)
        await h.scheduler.runDue()
        #expect(toBig() == 5)
        h.clock.advance(seconds: 30)
        await h.scheduler.runDue()
        #expect(toBig() == 6)
        #expect(try h.rows("SELECT count(*) FROM recipient WHERE state = 'delivered'").first?[0] == 10)
        #expect(g.snapshot(now: h.clock.now()).first { $0.key.destination == "bigmail" }?.open == 0)
    }

    /// Domains the MX cache does not know yet: each one's first connection
    /// is admitted as the domain, and counted against the provider as soon
    /// as its MX host shows whose it is; one that finds the provider full
    /// is closed unused and its mail waits, untried.
    @Test func anUnseenDomainIsCountedAgainstItsProviderOnceItsMXHostIsKnown() async throws {
        let (h, g) = try harness { store in
            self.gate(store) { $0.destinations["bigmail"] = ShapingLimits(connections: 1) }
        }
        h.agent.slow = ["one.bigmail.test", "two.bigmail.test"] // both connections stay open while the pass runs
        try await h.submit(["ok1@one.bigmail.test"])
        try await h.submit(["ok2@two.bigmail.test"])
        let pass = Task { await h.scheduler.runDue() }
        // Both domains got a connection (neither was known), but only one carries mail.
        for _ in 0..<500 where h.agent.connections < 2 { try await Task.sleep(for: .milliseconds(5)) }
        try await Task.sleep(for: .milliseconds(50))
        #expect(h.agent.connections == 2)
        #expect(g.destination(for: "one.bigmail.test") == "bigmail" && g.destination(for: "two.bigmail.test") == "bigmail")
        #expect(g.snapshot(now: h.clock.now()).first { $0.key.destination == "bigmail" }?.open == 1)
        h.agent.releaseSlow()
        await pass.value
        #expect(h.agent.sent.count == 1)
        #expect(try h.rows("SELECT count(*) FROM recipient WHERE state = 'queued' AND attempts = 0").first?[0] == 1)
        // Nothing is left counted; the next pass sends the other under the provider's limit.
        #expect(g.snapshot(now: h.clock.now()).allSatisfy { $0.open == 0 })
        await h.scheduler.runDue()
        #expect(try h.rows("SELECT count(*) FROM recipient WHERE state = 'delivered'").first?[0] == 2)
        #expect(h.agent.connections == 3)
    }

    @Test func aThrottlingReplySuspendsTheDestinationAndTheRestKeepsFlowing() async throws {
        let (h, g) = try harness { store in
            self.gate(store) {
                $0.rules = [ThrottleRule(name: "busy", matcher: try! ReplyMatcher(code: .klass(4), pattern: "mailbox busy"), action: .suspend,
                                         durationMillis: 600_000)]
            }
        }
        try await h.submit(["temp1@slow.test"])
        try await h.submit(["ok2@slow.test"])
        try await h.submit(["ok3@slow.test"])
        try await h.submit(["ok@fast.test"])
        await h.scheduler.runDue()
        // The first message's reply suspended slow.test. The second had been
        // admitted with the first (to go in the same write): it went; the
        // third was given back untried.
        #expect(try h.state("temp1@slow.test") == "deferred")
        #expect(try h.state("ok2@slow.test") == "delivered")
        #expect(try h.rows("SELECT attempts, state FROM recipient WHERE address = 'ok3@slow.test'").first.map { "\($0[0] as Int) \($0[1] as String)" } == "0 queued")
        #expect(try h.state("ok@fast.test") == "delivered")
        await g.flush(now: h.clock.now())
        let event = try #require(try h.rows("SELECT detail FROM event WHERE kind = 'shaping_suspended'").first?[0] as String?)
        #expect(event.contains("\"destination\":\"slow.test\"") && event.contains("busy"))
        #expect(try h.rows("SELECT mode, suspended_until FROM shaping_state WHERE destination = 'slow.test'").first.map {
            [$0[0] as String, "\($0[1] as Int64)"] } == ["suspended", "\(h.clock.now() + 600_000)"])

        // A restart in the middle of the suspension: a new gate from the same store.
        h.clock.advance(seconds: 300)
        var c = ShapingConfig()
        c.rules = []
        let restarted = ShapingGate(config: c, providers: ShapingGateTests.bigmail, store: h.store)
        try restarted.load(now: h.clock.now())
        let h2 = try Harness(store: h.store, clock: h.clock) { $0.gate = restarted }
        await h2.scheduler.runDue()
        #expect(h2.agent.sent.isEmpty)
        #expect(restarted.admit(SendRequest(.connection, destination: "slow.test", worker: 1), now: h.clock.now()) == .notBefore(h.clock.now() + 300_000))
        // It ends on time, and the waiting mail goes.
        h.clock.advance(seconds: 300)
        await h2.scheduler.runDue()
        #expect(try h.state("ok3@slow.test") == "delivered")
        await restarted.flush(now: h.clock.now())
        #expect(try h.rows("SELECT count(*) FROM event WHERE kind = 'shaping_resumed'").first?[0] == 1)
    }

    @Test func operatorsChangesReachARunningGate() async throws {
        let store = try Store(path: FileManager.default.temporaryDirectory.appendingPathComponent("tern-shape-\(UUID().uuidString)/t.sqlite").path)
        let g = gate(store) { $0.defaults.connections = 5 }
        try g.load(now: 1_000)
        // Connections are named by the scheduler's worker ids.
        let req = SendRequest(.connection, destination: "example.test", worker: 1)
        let second = SendRequest(.connection, destination: "example.test", worker: 2)
        #expect(g.admit(req, now: 1_000) == .go)
        try await store.changeShapingOverride(destination: "example.test", now: 2_000, event: .shapingPaused, detail: "{}", reset: false) { $0.paused = true }
        g.pollOverrides()
        #expect(g.admit(second, now: 2_000) == .notBefore(3_000))
        try await store.changeShapingOverride(destination: "example.test", now: 3_000, event: .shapingSet, detail: "{}", reset: false) {
            $0.limits = #"{"connections":1}"#
        }
        try await store.changeShapingOverride(destination: "example.test", now: 3_000, event: .shapingResumed, detail: "{}", reset: true) {
            $0.paused = false
        }
        g.pollOverrides()
        // One already open (admitted above): the operator's limit of one holds the next.
        #expect(g.admit(second, now: 3_000) == .busy)
        g.ended(req, now: 3_000)
        #expect(g.admit(second, now: 3_000) == .go)
        #expect(g.terms(SendRequest(.message, destination: "example.test"), now: 3_000) == ConnectionTerms())
        #expect(try store.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM event WHERE kind LIKE 'shaping_%'") } == 3)
    }

    /// A worker claims what the tokens allow, not a whole claim batch that it
    /// would mostly give back. (The allowance is not a reservation: the pass's
    /// two workers may each claim it once; the whole batch was 8 given back.)
    @Test func claimsFollowTheRateAllowance() async throws {
        let (h, g) = try harness { store in
            self.gate(store) { $0.destinations["rate.test"] = ShapingLimits(messagesPerMinute: 2) }
        }
        for i in 0..<10 { try await h.submit(["ok\(i)@rate.test"]) }
        await h.scheduler.runDue()
        #expect(h.agent.sent.count == 2)
        #expect(h.scheduler.givenBackPaced.load(ordering: .relaxed) <= 3)
        #expect(g.allowance(SendRequest(.message, destination: "rate.test"), now: h.clock.now()) == 0)
        h.clock.advance(seconds: 60)
        #expect(g.allowance(SendRequest(.message, destination: "rate.test"), now: h.clock.now()) == 2)
        await h.scheduler.runDue()
        #expect(h.agent.sent.count == 4)
        #expect(h.scheduler.givenBackPaced.load(ordering: .relaxed) <= 6)
    }

    @Test func recipientsPerTransactionAndMessagesPerConnectionComeFromTheGate() async throws {
        let (h, _) = try harness { store in
            self.gate(store) { $0.destinations["split.test"] = ShapingLimits(messagesPerConnection: 1, recipientsPerMessage: 2) }
        }
        try await h.submit(["ok1@split.test", "ok2@split.test", "ok3@split.test", "ok4@split.test", "ok5@split.test"])
        try await h.submit(["ok6@split.test"])
        // One message per connection: each pass's worker sends one transaction and gives the rest back.
        for _ in 0..<6 { await h.scheduler.runDue() }
        // Three transactions for the five recipients; one connection each.
        #expect(h.agent.sent.map(\.envelope.recipients.count).sorted() == [1, 1, 2, 2])
        #expect(h.agent.connections == 4)
        #expect(try h.rows("SELECT count(*) FROM recipient WHERE state = 'delivered'").first?[0] == 6)
    }
}
