// The suppression list through the scheduler: hard bounces add addresses,
// suppressed recipients are settled without delivery (event, DSN per
// NOTIFY), expired entries stop counting.
import Foundation
import GRDB
import Testing
import TernDelivery
import TernProtocol
@testable import TernScheduler
@testable import TernStore

@Suite struct SuppressionTests {
    @Test func hardBounceSuppressesAndTheNextMessageIsNotDelivered() async throws {
        let h = try Harness()
        defer { h.store.close() }
        try await h.submit(["perm-gone@far.test", "ok1@far.test"])
        await h.scheduler.runDue()
        #expect(try h.state("perm-gone@far.test") == "bounced")
        let entries = try h.store.suppressions()
        #expect(entries.map(\.address) == ["perm-gone@far.test"])
        #expect(entries[0].source == "bounce" && entries[0].reason.hasPrefix("550 5.1.1"))
        #expect(try h.rows("SELECT count(*) FROM event WHERE kind = 'suppression_added'").first?[0] as Int? == 1)
        #expect(try h.rows("SELECT category FROM attempt WHERE outcome = 'bounced'").first?[0] as String? == "invalid_recipient")

        // A later message to the same address (any case) is settled without a delivery attempt.
        let sentBefore = h.agent.sent.count
        h.clock.advance(ms: 1000)
        let id = try await h.submit(["PERM-gone@far.test", "ok2@far.test"])
        await h.scheduler.runDue()
        #expect(try h.state("PERM-gone@far.test") == "suppressed")
        #expect(try h.state("ok2@far.test") == "delivered")
        let sentNow = h.agent.sent[sentBefore...].flatMap { $0.envelope.recipients.map(\.address) }
        #expect(sentNow.contains("ok2@far.test") && !sentNow.contains("PERM-gone@far.test"))
        let r = try h.rows("SELECT attempts, last_code, last_enhanced, final_at IS NOT NULL FROM recipient WHERE address = 'PERM-gone@far.test'")[0]
        #expect(r[0] as Int == 0 && r[1] as Int == 550 && r[2] as String == "5.7.1" && r[3] as Bool)
        #expect(try h.rows("SELECT count(*) FROM event WHERE kind = 'suppressed' AND message_id = \(id)").first?[0] as Int? == 1)
        // The sender gets a failure DSN for it (default NOTIFY).
        let dsns = try h.dsns().filter { $0["dsn_for"] as Int64? == id }
        #expect(dsns.count == 1)
        let body = String(decoding: dsns[0]["body"] as Data, as: UTF8.self)
        #expect(body.contains("PERM-gone@far.test") && body.contains("Status: 5.7.1"))
    }

    /// Issue 15: one canonical form for both sides (domain lower-cased and as
    /// an A-label), so "jörg@Bücher.TEST" on the list stops mail to
    /// "jörg@xn--bcher-kva.test" and the other way round.
    @Test func suppressionComparesCanonicalAddresses() async throws {
        let h = try Harness()
        defer { h.store.close() }
        h.agent.allOK = true
        #expect(AddressParser.canonical("jörg@Bücher.TEST") == "jörg@xn--bcher-kva.test")
        try await h.store.addSuppressions([Suppression(address: AddressParser.canonical("jörg@Bücher.TEST")!, reason: "manual",
                                                       source: "manual", createdAt: h.clock.now())])
        try await h.submit(["jörg@xn--bcher-kva.test", "ok@xn--bcher-kva.test"])
        try await h.submit(["ok2@BÜCHER.test", "JÖRG@bücher.test"])
        await h.scheduler.runDue()
        #expect(try h.state("jörg@xn--bcher-kva.test") == "suppressed")
        #expect(try h.state("ok@xn--bcher-kva.test") == "delivered")
        #expect(try h.state("JÖRG@bücher.test") == "delivered") // a non-ASCII local part keeps its case
        #expect(try h.state("ok2@BÜCHER.test") == "delivered")
    }

    /// Issue 18: suppression follows the bounce categories configured.
    @Test func onlyTheConfiguredCategoriesSuppress() async throws {
        let h = try Harness { $0.policy.suppressCategories = [.inactiveMailbox] }
        defer { h.store.close() }
        // 550 5.1.1 "no such user": invalid_recipient, not configured here.
        try await h.submit(["perm-x@far.test"])
        await h.scheduler.runDue()
        #expect(try h.state("perm-x@far.test") == "bounced")
        #expect(try h.store.suppressions().isEmpty)
        #expect(try h.rows("SELECT category FROM attempt").first?[0] as String? == "invalid_recipient")
    }

    @Test func notifyNeverAndOnlySuppressedAndExpiry() async throws {
        let h = try Harness { $0.policy.suppressOnHardBounce = false }
        defer { h.store.close() }
        try await h.store.addSuppressions([
            Suppression(address: "blocked@far.test", reason: "manual", source: "manual", createdAt: 0),
            Suppression(address: "brief@far.test", reason: "for a while", source: "manual", createdAt: 0, expiresAt: 5_000),
        ])
        try await h.submit(["blocked@far.test"], notify: "NEVER")
        await h.scheduler.runDue()
        #expect(try h.state("blocked@far.test") == "suppressed")
        #expect(h.agent.connections == 0) // nothing left to deliver: no connection at all
        #expect(try h.dsns().isEmpty)     // NOTIFY=NEVER
        // Hard bounces do not suppress when turned off.
        try await h.submit(["perm-x@far.test"])
        await h.scheduler.runDue()
        #expect(try h.store.suppressions().map(\.address).sorted() == ["blocked@far.test", "brief@far.test"])
        // An expired entry no longer suppresses.
        h.clock.advance(ms: 10_000)
        try await h.submit(["brief@far.test"])
        await h.scheduler.runDue()
        #expect(try h.state("brief@far.test") == "bounced") // delivered to the fake agent, which bounces this local part
    }
}

@Suite struct RetentionSweeperTests {
    @Test func sweepPrunesFinishedMailOnlyWithTheInjectedClock() async throws {
        let h = try Harness()
        defer { h.store.close() }
        try await h.submit(["ok1@far.test"])
        try await h.submit(["temp1@far.test"])
        await h.scheduler.runDue()
        #expect(try h.state("ok1@far.test") == "delivered" && h.state("temp1@far.test") == "deferred")
        var policy = RetentionPolicy()
        policy.bodyDays = 1
        policy.historyDays = 2
        let sweeper = RetentionSweeper(store: h.store, policy: policy, intervalSeconds: 3600, clock: h.clock)
        // Nothing is old enough yet.
        #expect(await sweeper.sweep() == PruneResult())
        h.clock.advance(seconds: 86_400 + 60)
        let first = try #require(await sweeper.sweep())
        #expect(first.bodies == 1 && first.messages == 0) // the delivered one loses its body
        h.clock.advance(seconds: 86_400)
        let second = try #require(await sweeper.sweep())
        #expect(second.messages == 1 && second.events > 0)
        // The deferred message (and its DSN-less history) is untouched, body and all.
        let left = try h.rows("SELECT r.address, m.body IS NOT NULL FROM message m JOIN recipient r ON r.message_id = m.id")
        #expect(left.map { $0[0] as String } == ["temp1@far.test"] && left[0][1] as Bool)
    }
}
