import Foundation
import GRDB
import Testing
import TernDelivery
import TernProtocol
@testable import TernScheduler
@testable import TernStore

/// Issue 19: warm-up in the scheduler, on a manual clock over simulated
/// days: caps per day and hour, a plan that advances on healthy days and
/// holds or steps back on Yahoo's deferral and block texts, overflow to a
/// warm source of the pool, and a restart that resumes the same day.
@Suite struct WarmupGateTests {
    static let plan = { () -> WarmupPlan in
        var p = WarmupPlan(name: "test", daily: [8, 16, 32], hours: 4) // 2, 4, 8 an hour
        p.minSample = 4
        return p
    }()
    static let warm = OutboundSource(name: "w", address: IPAddress("127.0.0.2")!)
    static let old = OutboundSource(name: "old", address: IPAddress("127.0.0.3")!)

    /// A scheduler whose pool is `members`, with a gate warming "w"; `store`: a restart over it.
    func harness(_ members: [(OutboundSource, Int)], store: Store? = nil, clock: ManualClock? = nil) throws -> (Harness, ShapingGate) {
        let base = try store.map { try Harness(store: $0, clock: clock!) } ?? Harness()
        var config = ShapingConfig()
        config.rules = []
        let gate = ShapingGate(config: config, sources: members.map(\.0.name), warmupPlans: [WarmupGateTests.plan], warming: ["w": "test"],
                               store: base.store)
        try gate.load(now: base.clock.now())
        let book = SourceBook(sources: members.map(\.0), pools: [SourcePool(name: "main", members: members)], defaultPool: "main")
        let h = try Harness(store: base.store, clock: base.clock) { c in
            c.gate = gate
            c.sources = book
        }
        return (h, gate)
    }

    func sentFrom(_ h: Harness, _ source: String) -> Int { h.agent.sentFrom.filter { $0 == source }.count }

    @Test func capsHoldPerHourAndDayAndThePlanFollowsTheResults() async throws {
        let (h, gate) = try harness([(WarmupGateTests.warm, 1)])
        let start = h.clock.now()
        for i in 0..<40 { try await h.submit(["ok\(i)@dest.test"]) }
        await h.scheduler.runDue()
        // Day 1: 8 a day over 4 hours, 2 an hour; the rest waits untried.
        #expect(sentFrom(h, "w") == 2)
        #expect(try h.rows("SELECT count(*) FROM recipient WHERE state = 'queued' AND attempts = 0").first?[0] == 38)
        await h.scheduler.runDue()
        #expect(sentFrom(h, "w") == 2)
        for hour in 1...6 {
            h.clock.advance(ms: Warmup.hourMillis)
            gate.advance(now: h.clock.now())
            await h.scheduler.runDue()
            #expect(sentFrom(h, "w") == min(8, 2 * (hour + 1)), "hour \(hour)")
        }
        // Nothing bounced or deferred for pacing.
        #expect(try h.rows("SELECT count(*) FROM recipient WHERE state IN ('bounced', 'deferred', 'expired')").first?[0] == 0)
        // The day ends healthy: day 2, 4 an hour.
        h.clock.advance(ms: start + Warmup.dayMillis - h.clock.now())
        gate.advance(now: h.clock.now())
        #expect(gate.warmupSnapshot().progress["w"]?.day == 2)
        await h.scheduler.runDue()
        #expect(sentFrom(h, "w") == 12)
        await gate.flush(now: h.clock.now())
        #expect(try h.rows("SELECT kind FROM event WHERE kind LIKE 'warmup_%' ORDER BY id").map { $0[0] as String } == ["warmup_started", "warmup_advanced"])

        // A restart resumes the same day with the hour's count: nothing more this hour.
        let (h2, gate2) = try harness([(WarmupGateTests.warm, 1)], store: h.store, clock: h.clock)
        #expect(gate2.warmupSnapshot().progress["w"]?.day == 2 && gate2.warmupSnapshot().counts["w"]?["dest.test"]?.sent == 4)
        await h2.scheduler.runDue()
        #expect(sentFrom(h2, "w") == 0)

        // Day 2 meets Yahoo's volume deferrals (TSS04, 4 of 8 answers): the plan holds on day 2.
        try await h.store.write { db in try db.execute(sql: "DELETE FROM recipient WHERE state = 'queued'") }
        for i in 0..<4 { try await h2.submit(["tss04-\(i)@dest.test"]) }
        h.clock.advance(ms: Warmup.hourMillis)
        await h2.scheduler.runDue()
        for i in 0..<20 { try await h2.submit(["ok-b\(i)@dest.test"]) }
        h.clock.advance(ms: start + 2 * Warmup.dayMillis - h.clock.now())
        gate2.advance(now: h.clock.now())
        var p = try #require(gate2.warmupSnapshot().progress["w"])
        #expect(p.day == 2 && p.verdict == .held && p.reason?.contains("deferred") == true, "\(p)")
        // The repeated day 2 starts from zero, also for a restart: the last day's counts are gone.
        await gate2.flush(now: h.clock.now())
        #expect(try h.rows("SELECT count(*) FROM warmup_usage WHERE day_started_at <> (SELECT day_started_at FROM warmup_state WHERE source = 'w')").first?[0] == 0)
        let (_, gate3) = try harness([(WarmupGateTests.warm, 1)], store: h.store, clock: h.clock)
        #expect(gate3.warmupSnapshot().progress["w"]?.day == 2 && (gate3.warmupSnapshot().counts["w"] ?? [:]).isEmpty)

        // Day 2 again, now with Yahoo's reputation block (TSS09): back to day 1.
        try await h.store.write { db in try db.execute(sql: "DELETE FROM recipient WHERE state IN ('queued', 'deferred')") }
        for i in 0..<3 { try await h2.submit(["tss09-\(i)@dest.test"]) }
        for i in 0..<3 { try await h2.submit(["ok-c\(i)@dest.test"]) }
        await h2.scheduler.runDue()
        h.clock.advance(ms: start + 3 * Warmup.dayMillis - h.clock.now())
        gate2.advance(now: h.clock.now())
        p = try #require(gate2.warmupSnapshot().progress["w"])
        #expect(p.day == 1 && p.verdict == .steppedBack && p.reason?.contains("reputation") == true, "\(p)")
        await gate2.flush(now: h.clock.now())
        #expect(try h.rows("SELECT kind FROM event WHERE kind LIKE 'warmup_%' ORDER BY id").map { $0[0] as String }
            == ["warmup_started", "warmup_advanced", "warmup_held", "warmup_stepped_back"])
        #expect(try h.rows("SELECT day, verdict FROM warmup_state WHERE source = 'w'").map { [$0[0] as Int == 1, $0[1] as String == "stepped_back"] } == [[true, true]])
    }

    @Test func mailOverAWarmingSourcesCapGoesFromTheWarmOnes() async throws {
        let (h, gate) = try harness([(WarmupGateTests.warm, 1), (WarmupGateTests.old, 1)])
        for i in 0..<30 { try await h.submit(["ok\(i)@dest.test"]) }
        await h.scheduler.runDue()
        await h.scheduler.runDue()
        // The warming source takes its hour's cap; everything else goes from the warm one, at once.
        #expect(sentFrom(h, "w") == 2)
        #expect(sentFrom(h, "old") == 28)
        #expect(try h.rows("SELECT count(*) FROM recipient WHERE state = 'delivered'").first?[0] == 30)
        #expect(gate.warmupSnapshot().counts["w"]?["dest.test"]?.sent == 2)
    }

    /// A source whose address cannot be bound leaves rotation (its mail goes
    /// from the others, untried), and the scheduler's probe brings it back.
    @Test func anUnboundSourceComesBackWhenItsAddressBindsAgain() async throws {
        let book = SourceBook(sources: [WarmupGateTests.warm, WarmupGateTests.old],
                              pools: [SourcePool(name: "main", members: [(WarmupGateTests.warm, 5), (WarmupGateTests.old, 1)])], defaultPool: "main")
        let h = try Harness { c in
            c.sources = book
            c.sourceProbeMillis = 30_000
        }
        h.agent.unbindable = ["w"]
        for i in 0..<5 { try await h.submit(["ok\(i)@dest.test"]) }
        await h.scheduler.runDue()
        await h.scheduler.runDue()
        #expect(sentFrom(h, "old") == 5 && sentFrom(h, "w") == 0)
        #expect(book.holds["w"]?[.bind]?.contains("Cannot assign requested address") == true)
        #expect(try h.rows("SELECT count(*) FROM attempt").first?[0] == 5) // nothing was tried from w
        // The address is back (127.0.0.2 binds): the next pass after the probe interval puts w in rotation.
        h.agent.unbindable = []
        h.clock.advance(seconds: 31)
        await h.scheduler.runDue()
        #expect(book.holds["w"] == nil)
        for i in 0..<5 { try await h.submit(["ok-b\(i)@dest.test"]) }
        await h.scheduler.runDue()
        #expect(sentFrom(h, "w") > 0)
        #expect(try h.rows("SELECT kind FROM event WHERE kind LIKE 'source_%' ORDER BY id").map { $0[0] as String } == ["source_unavailable", "source_available"])
        #expect(try h.rows("SELECT count(*) FROM source_status WHERE source = 'w' AND bind_error IS NULL").first?[0] == 1)
    }
}
