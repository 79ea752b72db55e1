import Foundation
import Synchronization
import Testing
@testable import TernScheduler
@testable import TernStore

/// A gate for tests: refuses connections to some destinations until a time,
/// and lets a number of messages through, then says "not before" a time.
final class TestGate: SendGate {
    struct Rules {
        var closedUntil: [String: Int64] = [:]
        var messagesLeft: Int? = nil
        var reopenAt: Int64 = 0
        var asked: [SendRequest] = []
    }
    let rules = Mutex(Rules())

    func admit(_ request: SendRequest, now: Int64) -> SendPermission {
        rules.withLock { r in
            r.asked.append(request)
            if let until = r.closedUntil[request.destination], until > now { return .notBefore(until) }
            guard request.kind == .message, let left = r.messagesLeft else { return .go }
            if now >= r.reopenAt && r.reopenAt > 0 { return .go }
            if left == 0 { return .notBefore(r.reopenAt) }
            r.messagesLeft = left - 1
            return .go
        }
    }
}

/// Issue 16 item 1: the seam shaping and warm-up plug into. The scheduler
/// asks before each connection and each message; "not now" is never a
/// failure: nothing is attempted, counted or bounced, and the mail goes out
/// once the gate opens.
@Suite struct SendGateTests {
    @Test func aClosedDestinationGetsNoConnectionUntilTheGateOpens() async throws {
        let gate = TestGate()
        let h = try Harness { $0.gate = gate }
        let opens = h.clock.now() + 60_000
        gate.rules.withLock { $0.closedUntil["paced.test"] = opens }
        try await h.submit(["ok1@paced.test", "ok2@paced.test"])
        try await h.submit(["ok@free.test"])
        await h.scheduler.runDue()
        #expect(h.agent.sent.map { $0.envelope.recipients.map(\.address) } == [["ok@free.test"]])
        #expect(try h.state("ok1@paced.test") == "queued")
        #expect(try h.rows("SELECT count(*) FROM attempt a JOIN recipient r ON r.id = a.recipient_id WHERE r.domain = 'paced.test'").first?[0] == 0)
        #expect(try h.rows("SELECT attempts FROM recipient WHERE domain = 'paced.test'").map { $0[0] as Int } == [0, 0])
        #expect(gate.rules.withLock { $0.asked.contains { $0.kind == .connection && $0.destination == "paced.test" } })
        #expect(h.scheduler.state.withLock { $0.pacedUntil[Lane(domain: "paced.test")] } == opens)
        // Still closed a second before; open after.
        h.clock.advance(ms: 59_000)
        await h.scheduler.runDue()
        #expect(h.agent.sent.count == 1)
        h.clock.advance(ms: 1_000)
        await h.scheduler.runDue()
        #expect(h.agent.sent.count == 2)
        #expect(try h.state("ok1@paced.test") == "delivered" && h.state("ok2@paced.test") == "delivered")
    }

    @Test func messagesOverTheGatesAllowanceAreGivenBackUntouched() async throws {
        let gate = TestGate()
        let h = try Harness { $0.gate = gate }
        gate.rules.withLock { $0.messagesLeft = 2; $0.reopenAt = h.clock.now() + 30_000 }
        for i in 0..<5 { try await h.submit(["ok\(i)@a.test"]) }
        await h.scheduler.runDue()
        // One connection: two messages, then the gate said "not before".
        #expect(h.agent.connections == 1)
        #expect(h.agent.sent.count == 2)
        #expect(try h.rows("SELECT count(*) FROM recipient WHERE state = 'delivered'").first?[0] == 2)
        #expect(try h.rows("SELECT count(*) FROM recipient WHERE state = 'queued' AND attempts = 0 AND lease_owner IS NULL").first?[0] == 3)
        #expect(try h.rows("SELECT count(*) FROM attempt").first?[0] == 2)
        #expect(h.scheduler.givenBackAtLimit.load(ordering: .relaxed) == 0) // paced, not the per-connection limit
        #expect(h.scheduler.state.withLock { $0.pacedUntil[Lane(domain: "a.test")] } == h.clock.now() + 30_000)
        #expect(h.scheduler.runningWorkers == 0)
        // The gate reopens: the rest go out.
        h.clock.advance(ms: 30_000)
        await h.scheduler.runDue()
        #expect(h.agent.sent.count == 5)
        #expect(try h.rows("SELECT count(*) FROM recipient WHERE state = 'delivered'").first?[0] == 5)
    }

    /// Without a gate configured every request is let through: the default
    /// is Tern's behaviour before the seam.
    @Test func theDefaultGateLetsEverythingThrough() {
        let gate = OpenGate()
        #expect(gate.admit(SendRequest(.connection, destination: "x.test"), now: 0) == .go)
        #expect(gate.admit(SendRequest(.message, destination: "x.test", source: "192.0.2.1"), now: 0) == .go)
        #expect(SchedulerConfig(hostname: "h").gate is OpenGate)
    }
}
