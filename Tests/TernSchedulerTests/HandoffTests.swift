// Claimed at intake: the running scheduler leases new mail in the intake
// transaction and delivers it from memory (no claim, no read of the body);
// its limits send the rest down the usual path; what it did not take goes
// back to the store at stop, or when it waited too long for its lease.
import Foundation
import GRDB
import Synchronization
import Testing
import TernDelivery
import TernProtocol
@testable import TernScheduler
@testable import TernStore

extension Harness {
    /// What intake does with a handoff: reserve, commit, hand over.
    @discardableResult
    func handOver(_ rcpts: [String], size: Int = 0) async throws -> (id: Int64, leased: Bool) {
        let recipients = rcpts.map { NewRecipient(address: $0, domain: String($0.split(separator: "@")[1])) }
        var m = NewMessage(queueID: UUID().uuidString, receivedAt: clock.now(), mailFrom: "alice@sender.test",
                           body: Data(("Subject: handed over\r\n\r\n" + String(repeating: "x", count: size) + "\r\n").utf8),
                           clientAddress: "127.0.0.1", helo: "c", headerMessageID: nil, envID: nil, ret: nil,
                           bodyType: nil, smtputf8: false, origin: "smtp", recipients: recipients)
        m.lease = scheduler.reserve(m)
        let message = m
        let inserted: InsertedMessage = try await withCheckedThrowingContinuation { cont in
            store.insertMessage(message) { cont.resume(with: $0.mapError { $0 as Error }) }
        }
        if message.lease != nil { scheduler.handOff(message, inserted: inserted) }
        if message.lease == nil || inserted.leasedRecipientIDs.contains(nil) { scheduler.wake() }
        return (inserted.id, message.lease != nil)
    }

    /// Runs the scheduler's service loop until `body` is done, then stops it.
    func running(_ body: () async throws -> Void) async throws {
        let task = Task { try await scheduler.run() }
        #expect(await eventually { scheduler.state.withLock { $0.running } })
        do { try await body() } catch {
            scheduler.stop()
            agent.releaseSlow()
            _ = try? await task.value
            throw error
        }
        scheduler.stop()
        agent.releaseSlow()
        try await task.value
    }

    func count(_ sql: String) throws -> Int { try rows(sql).first?[0] ?? -1 }
}

/// Waits (up to 10 s of real time) for a condition another task makes true.
func eventually(_ condition: () throws -> Bool) async -> Bool {
    for _ in 0..<1000 {
        if (try? condition()) == true { return true }
        try? await Task.sleep(for: .milliseconds(10))
    }
    return false
}

@Suite struct HandoffTests {
    @Test func reserveIsRefusedUnlessTheSchedulerRuns() throws {
        let h = try Harness()
        defer { h.store.close() }
        let m = NewMessage(queueID: "Q", receivedAt: 0, mailFrom: "", body: Data("x".utf8), clientAddress: nil, helo: nil,
                           headerMessageID: nil, envID: nil, ret: nil, bodyType: nil, smtputf8: false, origin: "smtp",
                           recipients: [NewRecipient(address: "ok@a.test", domain: "a.test")])
        #expect(h.scheduler.reserve(m) == nil)
    }

    @Test func handedOverMailIsLeasedInTheIntakeTransactionAndDeliveredFromMemory() async throws {
        let h = try Harness()
        defer { h.store.close() }
        try await h.running {
            let (id, leased) = try await h.handOver(["ok1@a.test", "ok2@b.test"])
            #expect(leased)
            #expect(await eventually { try h.count("SELECT count(*) FROM recipient WHERE state = 'delivered'") == 2 })
            // One message per destination, each with the body as committed.
            let sent = h.agent.sent.filter { $0.messageID == id }
            #expect(sent.count == 2)
            #expect(sent.allSatisfy { String(decoding: $0.body, as: UTF8.self) == "Subject: handed over\r\n\r\n\r\n" })
            #expect(try h.count("SELECT count(*) FROM attempt WHERE outcome = 'delivered'") == 2)
            #expect(try h.count("SELECT count(*) FROM event WHERE kind = 'delivered' AND message_id = \(id)") == 2)
            #expect(try h.count("SELECT count(*) FROM recipient WHERE lease_owner IS NOT NULL") == 0)
            #expect(h.scheduler.state.withLock { $0.ready.heldRecipients == 0 && $0.ready.heldBytes == 0 })
        }
    }

    @Test func theInsertLeasesToTheOwnerAndLeavesSuppressedAddressesQueued() async throws {
        let h = try Harness()
        defer { h.store.close() }
        _ = try await h.store.addSuppressions([Suppression(address: "Gone@a.test", reason: "manual", source: "manual", createdAt: 0)])
        let m = NewMessage(queueID: "Q1", receivedAt: 1000, mailFrom: "a@s.test", body: Data("x".utf8), clientAddress: nil, helo: nil,
                           headerMessageID: nil, envID: nil, ret: nil, bodyType: nil, smtputf8: false, origin: "smtp",
                           recipients: [NewRecipient(address: "ok@a.test", domain: "a.test"), NewRecipient(address: "gone@a.test", domain: "a.test")])
        var leasedMessage = m
        leasedMessage.lease = IntakeLease(owner: "me", until: 5000)
        let inserted: InsertedMessage = try await withCheckedThrowingContinuation { cont in
            h.store.insertMessage(leasedMessage) { cont.resume(with: $0.mapError { $0 as Error }) }
        }
        #expect(inserted.leasedRecipientIDs.count == 2)
        #expect(inserted.leasedRecipientIDs[0] != nil && inserted.leasedRecipientIDs[1] == nil)
        let rows = try h.rows("SELECT address, state, lease_owner, lease_expires_at FROM recipient ORDER BY id")
        #expect(rows.map { $0[0] as String } == ["ok@a.test", "gone@a.test"])
        #expect(rows[0][1] as String == "inflight" && rows[0][2] as String? == "me" && rows[0][3] as Int64? == 5000)
        #expect(rows[1][1] as String == "queued" && rows[1][2] as String? == nil)
        #expect(try h.count("SELECT id FROM recipient WHERE address = 'ok@a.test'") == Int(inserted.leasedRecipientIDs[0]!))
    }

    @Test func aSuppressedRecipientOfAHandedOverMessageIsSettledByThePass() async throws {
        let h = try Harness()
        defer { h.store.close() }
        _ = try await h.store.addSuppressions([Suppression(address: "gone@a.test", reason: "manual", source: "manual", createdAt: 0)])
        try await h.running {
            try await h.handOver(["ok@a.test", "gone@a.test"])
            #expect(await eventually { try h.state("ok@a.test") == "delivered" && h.state("gone@a.test") == "suppressed" })
            #expect(!h.agent.sent.flatMap { $0.envelope.recipients.map(\.address) }.contains("gone@a.test"))
        }
    }

    @Test func pastItsLimitsMailIsQueuedTheUsualWayAndStillDelivered() async throws {
        let h = try Harness { $0.readyRecipients = 2 }
        defer { h.store.close() }
        h.agent.slow = ["a.test"]
        try await h.running {
            // The first is taken by a worker that blocks in the slow send;
            // the next two wait in memory (2 of 2); the fourth is queued.
            let r1 = try await h.handOver(["ok1@a.test"])
            #expect(r1.leased)
            #expect(await eventually { h.scheduler.state.withLock { $0.ready.heldRecipients == 0 } })
            let r2 = try await h.handOver(["ok2@a.test"])
            #expect(r2.leased)
            let r3 = try await h.handOver(["ok3@a.test"])
            #expect(r3.leased)
            let r4 = try await h.handOver(["ok4@a.test"])
            #expect(r4.leased == false)
            #expect(try h.state("ok4@a.test") == "queued")
            #expect(try h.count("SELECT count(*) FROM recipient WHERE state = 'inflight' AND lease_owner = '\(h.scheduler.owner)'") == 3)
            h.agent.releaseSlow()
            #expect(await eventually { try h.count("SELECT count(*) FROM recipient WHERE state = 'delivered'") == 4 })
            #expect(h.agent.sent.count == 4)
        }
    }

    @Test func stopGivesBackTheLeasesOfMailNoWorkerTook() async throws {
        let h = try Harness()
        defer { h.store.close() }
        h.agent.slow = ["a.test"]
        let task = Task { try await h.scheduler.run() }
        #expect(await eventually { h.scheduler.state.withLock { $0.running } })
        try await h.handOver(["ok1@a.test"])
        #expect(await eventually { h.scheduler.state.withLock { $0.ready.heldRecipients == 0 } })
        try await h.handOver(["ok2@a.test"])
        try await h.handOver(["ok3@a.test"])
        h.scheduler.stop()
        h.agent.releaseSlow()
        try await task.value
        // The one in flight was delivered and recorded; the others are queued again, unleased.
        #expect(try h.state("ok1@a.test") == "delivered")
        #expect(try h.state("ok2@a.test") == "queued" && h.state("ok3@a.test") == "queued")
        #expect(try h.count("SELECT count(*) FROM recipient WHERE lease_owner IS NOT NULL") == 0)
        #expect(h.agent.sent.count == 1)
        // And a stopped scheduler takes nothing more from intake.
        let r5 = try await h.handOver(["ok4@a.test"])
        #expect(r5.leased == false)
    }

    @Test func mailThatWaitedHalfItsLeaseGoesBackToTheStoreAndIsDeliveredOnce() async throws {
        let h = try Harness { $0.connectionCacheMillis = 0 }
        defer { h.store.close() }
        h.agent.slow = ["a.test"]
        try await h.running {
            try await h.handOver(["ok1@a.test"])
            #expect(await eventually { h.scheduler.state.withLock { $0.ready.heldRecipients == 0 } })
            let (second, _) = try await h.handOver(["ok2@a.test"])
            // Six of its ten minutes pass before a worker is free for it.
            h.clock.advance(seconds: 6 * 60)
            h.agent.releaseSlow()
            #expect(await eventually { try h.count("SELECT count(*) FROM recipient WHERE state = 'delivered'") == 2 })
            #expect(h.agent.sent.filter { $0.messageID == second }.count == 1)
            // It went through the store: given back, so the worker found nothing
            // more and closed; the pass claimed it for a second connection.
            #expect(h.agent.connections == 2)
            #expect(try h.count("SELECT count(*) FROM attempt a JOIN recipient r ON r.id = a.recipient_id WHERE r.message_id = \(second)") == 1)
        }
    }

    @Test func mailLeftInMemoryWhenAWorkerEndsGetsANewWorker() async throws {
        // One message per connection: the worker that took the first leaves
        // the next two in memory when it ends, and nothing else arrives to
        // start another. The pass cannot see leased rows; the ending worker
        // must hand them on.
        let h = try Harness { $0.messagesPerConnection = 1 }
        defer { h.store.close() }
        h.agent.slow = ["a.test"]
        try await h.running {
            try await h.handOver(["ok1@a.test"])
            #expect(await eventually { h.scheduler.state.withLock { $0.ready.heldRecipients == 0 } })
            try await h.handOver(["ok2@a.test"])
            try await h.handOver(["ok3@a.test"])
            h.agent.releaseSlow()
            #expect(await eventually { try h.count("SELECT count(*) FROM recipient WHERE state = 'delivered'") == 3 })
            #expect(h.agent.sent.count == 3)
        }
    }

    @Test func aWorkerTakesNoMoreThanItsConnectionMayCarry() async throws {
        // Two messages per connection, six handed over while the first send
        // hangs: each worker takes at most what it may still send, so nothing
        // goes back to the store to be claimed and read again.
        let h = try Harness { $0.messagesPerConnection = 2 }
        defer { h.store.close() }
        h.agent.slow = ["a.test"]
        try await h.running {
            try await h.handOver(["ok1@a.test"])
            #expect(await eventually { h.scheduler.state.withLock { $0.ready.heldRecipients == 0 } })
            for i in 2...6 { try await h.handOver(["ok\(i)@a.test"]) }
            h.agent.releaseSlow()
            #expect(await eventually { try h.count("SELECT count(*) FROM recipient WHERE state = 'delivered'") == 6 })
            #expect(h.agent.sent.count == 6)
            #expect(h.agent.connections == 3)
            #expect(h.scheduler.givenBackAtLimit.load(ordering: .relaxed) == 0)
        }
    }

    @Test func anIdleConnectionWaitsForTheNextMessageThenCloses() async throws {
        let h = try Harness()
        defer { h.store.close() }
        try await h.running {
            try await h.handOver(["ok1@a.test"])
            #expect(await eventually { try h.state("ok1@a.test") == "delivered" })
            // The worker keeps its connection open and takes the next message on it.
            #expect(await eventually { h.scheduler.state.withLock { $0.waiting[Lane(domain: "a.test")]?.count == 1 } })
            try await h.handOver(["ok2@a.test"])
            #expect(await eventually { try h.state("ok2@a.test") == "delivered" })
            #expect(h.agent.connections == 1 && h.agent.open["a.test"] == 1)
            // Queued mail that a pass finds due goes over it too.
            try await h.submit(["ok3@a.test"])
            h.scheduler.wake()
            #expect(await eventually { try h.state("ok3@a.test") == "delivered" })
            #expect(h.agent.connections == 1)
            // After the cache time (2 s on the scheduler's clock) the next pass closes it.
            #expect(await eventually { h.scheduler.state.withLock { $0.waiting[Lane(domain: "a.test")]?.count == 1 } })
            h.clock.advance(seconds: 3)
            h.scheduler.wake()
            #expect(await eventually { h.agent.open["a.test"] == 0 })
            #expect(h.scheduler.runningWorkers == 0)
        }
    }

    @Test func withoutTheCacheEachMessageGetsItsOwnConnection() async throws {
        let h = try Harness { $0.connectionCacheMillis = 0 }
        defer { h.store.close() }
        try await h.running {
            try await h.handOver(["ok1@a.test"])
            #expect(await eventually { try h.state("ok1@a.test") == "delivered" && h.agent.open["a.test"] == 0 })
            try await h.handOver(["ok2@a.test"])
            #expect(await eventually { try h.state("ok2@a.test") == "delivered" && h.agent.open["a.test"] == 0 })
            #expect(h.agent.connections == 2)
        }
    }

    @Test func stopEndsAnIdleConnectionsWait() async throws {
        let h = try Harness()
        defer { h.store.close() }
        let task = Task { try await h.scheduler.run() }
        #expect(await eventually { h.scheduler.state.withLock { $0.running } })
        try await h.handOver(["ok1@a.test"])
        #expect(await eventually { h.scheduler.state.withLock { $0.waiting[Lane(domain: "a.test")]?.count == 1 } })
        h.scheduler.stop()
        try await task.value
        #expect(h.agent.open["a.test"] == 0)
    }
}
