import Foundation
import Testing
import TernDelivery
import TernProtocol
@testable import TernScheduler

/// Issue 19: the warm-up plan's decisions, on simulated days (pure: every call takes `now`).
@Suite struct WarmupTests {
    let day = Warmup.dayMillis
    let hour = Warmup.hourMillis
    let start: Int64 = 1_800_000_000_000

    func warmup(_ plan: WarmupPlan = WarmupPlan(name: "p", daily: [48, 96, 192], hours: 24)) -> Warmup {
        var w = Warmup(plans: [plan])
        w.set("a", WarmupProgress(plan: plan.name, dayStartedAt: start))
        return w
    }

    /// Sends up to `n` messages (as the gate does: only while remaining > 0) and answers them all with `result`.
    func send(_ w: inout Warmup, _ n: Int, to d: String = "google", at now: Int64, _ result: WarmupResult = .delivered) -> Int {
        var sent = 0
        while sent < n, (w.remaining("a", d, now: now) ?? .max) > 0 {
            w.take("a", d, now: now)
            w.observe("a", d, result)
            sent += 1
        }
        return sent
    }

    @Test func theBuiltInPlanGoesFrom50To100000In30Days() {
        let p = WarmupPlan.builtIn
        #expect(p.daily.count == 30 && p.daily.first == 50 && p.daily.last == 100_000)
        #expect(zip(p.daily, p.daily.dropFirst()).allSatisfy { $0 < $1 })
        #expect(p.hourlyCap(day: 1) == 3 && p.cap(day: 31) == nil)
    }

    @Test func capsHoldPerDayAndPerHourAndPerDestination() {
        var w = warmup()
        // Day 1: 48 a day, spread over 24 hours: 2 an hour.
        #expect(send(&w, 10, at: start) == 2)
        #expect(w.remaining("a", "google", now: start + 10 * 60_000) == 0)
        #expect(w.nextWindow("a", "google", now: start + 10 * 60_000) == start + hour)
        // Another destination has its own cap.
        #expect(send(&w, 10, to: "microsoft", at: start) == 2)
        // The next hour, two more.
        #expect(send(&w, 10, at: start + hour + 5) == 2)
        // Over the whole day, no more than the day's cap.
        var total = 4
        for h in 2..<24 { total += send(&w, 10, at: start + Int64(h) * hour) }
        #expect(total == 48)
        #expect(w.remaining("a", "google", now: start + 23 * hour + 1) == 0)
        // A source without a plan has no cap.
        #expect(w.remaining("b", "google", now: start) == nil)
    }

    @Test func aHealthyDayAdvancesTheDayCapsGrowAndThePlanEnds() {
        var w = warmup()
        for h in 0..<24 { _ = send(&w, 10, at: start + Int64(h) * hour) }
        let changes = w.advance(now: start + day)
        #expect(changes.count == 1 && changes[0].progress.verdict == .advanced && changes[0].progress.day == 2)
        #expect(changes[0].counts["google"]?.sent == 48 && changes[0].finishedDay == 1)
        #expect(w.remaining("a", "google", now: start + day) == 4) // 96 a day: 4 an hour
        for h in 0..<24 { _ = send(&w, 10, at: start + day + Int64(h) * hour) }
        _ = w.advance(now: start + 2 * day)
        for h in 0..<24 { _ = send(&w, 10, at: start + 2 * day + Int64(h) * hour) }
        let last = w.advance(now: start + 3 * day)
        #expect(last.first?.progress.status == .done)
        #expect(w.remaining("a", "google", now: start + 3 * day) == nil) // warm: no caps
    }

    @Test func tooManyDeferralsHoldBlocksAndBouncesStepBack() {
        var w = warmup()
        w.set("a", WarmupProgress(plan: "p", day: 2, dayStartedAt: start))
        // 20 answered, 3 deferred (15 % > 10 %): hold on day 2.
        for i in 0..<20 { w.take("a", "google", now: start); w.observe("a", "google", i < 3 ? .deferred : .delivered) }
        var c = w.advance(now: start + day)
        #expect(c[0].progress.verdict == .held && c[0].progress.day == 2 && c[0].progress.reason?.contains("3 of 20 deferred") == true)
        // Block replies (421 4.7.0 reputation) over 2 %: back to day 1.
        for i in 0..<20 { w.take("a", "yahoo", now: start + day); w.observe("a", "yahoo", i < 1 ? .blocked(permanent: false) : .delivered) }
        c = w.advance(now: start + 2 * day)
        #expect(c[0].progress.verdict == .steppedBack && c[0].progress.day == 1 && c[0].progress.reason?.contains("reputation") == true)
        // Hard bounces over 5 %: stays at day 1 (never below).
        for i in 0..<20 { w.take("a", "google", now: start + 2 * day); w.observe("a", "google", i < 2 ? .bounced : .delivered) }
        c = w.advance(now: start + 3 * day)
        #expect(c[0].progress.verdict == .steppedBack && c[0].progress.day == 1)
        // Fewer answers than the minimum sample judge nothing: a small healthy-looking day advances.
        for i in 0..<5 { w.take("a", "google", now: start + 3 * day); w.observe("a", "google", i < 3 ? .deferred : .delivered) }
        c = w.advance(now: start + 4 * day)
        #expect(c[0].progress.verdict == .advanced && c[0].progress.day == 2)
    }

    @Test func aDayWithoutMailOrAPausedPlanHolds() {
        var w = warmup()
        var c = w.advance(now: start + day)
        #expect(c[0].progress.verdict == .held && c[0].progress.day == 1 && c[0].progress.reason == "no mail was sent on day 1")
        // A server that was down for three days judges each.
        c = w.advance(now: start + 4 * day)
        #expect(c.count == 3 && w.progress["a"]?.dayStartedAt == start + 4 * day)
        var paused = w.progress["a"]!
        paused.status = .paused
        w.set("a", paused)
        _ = send(&w, 2, at: start + 4 * day)
        c = w.advance(now: start + 5 * day)
        #expect(c[0].progress.verdict == .held && c[0].progress.reason == "paused by an operator" && c[0].progress.day == 1)
        // Paused keeps the caps.
        #expect(w.remaining("a", "google", now: start + 5 * day) == 2)
    }

    @Test func weightedSourcesShareConnectionsAndHeldSourcesLeaveRotation() throws {
        let a = OutboundSource(name: "a", address: try #require(IPAddress("127.0.0.2")))
        let b = OutboundSource(name: "b", address: try #require(IPAddress("127.0.0.3")))
        let book = SourceBook(sources: [a, b], pools: [SourcePool(name: "main", members: [(a, 1), (b, 3)])], defaultPool: "main")
        var sent = ["a": 0, "b": 0]
        for _ in 0..<400 {
            let first = try #require(book.candidates(pool: nil).first ?? nil)
            book.sent(first)
            sent[first.name, default: 0] += 1
        }
        #expect(sent == ["a": 100, "b": 300])
        #expect(book.hold("a", .bind, reason: "gone"))
        #expect(!book.hold("a", .bind, reason: "gone")) // no change the second time
        #expect(book.candidates(pool: "main").map { $0?.name } == ["b"])
        #expect(book.hold("b", .blocklist, reason: "listed"))
        #expect(book.candidates(pool: "main").isEmpty)
        #expect(book.release("a", .bind) && !book.release("a", .bind))
        #expect(book.candidates(pool: "main").map { $0?.name } == ["a"])
        // Without sources: the kernel's choice.
        #expect(SourceBook().candidates(pool: nil).count == 1 && SourceBook().candidates(pool: nil)[0] == nil)
        // Sources without pools: one pool of all, equal weights.
        #expect(Set(SourceBook(sources: [a, b], pools: [], defaultPool: nil).candidates(pool: "x").map { $0?.name }) == ["a", "b"])
    }

    @Test func aProbeBindsLoopbackAndNotAnAddressThisHostDoesNotHave() throws {
        #expect(SourceProbe.canBind(try #require(IPAddress("127.0.0.2"))) == nil)
        #expect(SourceProbe.canBind(try #require(IPAddress("192.0.2.55"))) != nil)
    }

    @Test func blocklistNamesAreReversedAddresses() throws {
        #expect(BlocklistMonitor.queryName(try #require(IPAddress("192.0.2.99")), zone: "zen.example") == "99.2.0.192.zen.example")
        // RFC 5782 §2.4: nibbles, reversed.
        #expect(BlocklistMonitor.queryName(try #require(IPAddress("2001:db8::1")), zone: "bl.example")
            == "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.example")
    }
}
