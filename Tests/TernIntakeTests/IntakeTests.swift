import Foundation
import NIOCore
import Synchronization
import Testing
@testable import TernIntake
import TernProtocol
@testable import TernStore

func tempDB() -> String {
    FileManager.default.temporaryDirectory.appendingPathComponent("tern-intake-\(UUID().uuidString)/t.sqlite").path
}

func envelope(_ rcpts: [String], from: String? = "a@x.test", utf8: Bool = false) -> Envelope {
    var p = MailParameters()
    p.ret = .full
    p.envelopeID = "ENV1"
    p.smtputf8 = utf8
    p.body = .eightBitMIME
    let recipients = rcpts.map { r -> EnvelopeRecipient in
        let m = try! AddressParser.parseMailbox(Substring(r), allowUTF8: true).get()
        return EnvelopeRecipient(mailbox: m, notify: Notify(success: true), orcpt: OriginalRecipient(addressType: "rfc822", address: r))
    }
    let sender = from.map { try! AddressParser.parseMailbox(Substring($0), allowUTF8: true).get() }
    return Envelope(clientAddress: "192.0.2.7", helo: "client.test", protocolName: "ESMTP", mailFrom: sender,
                    parameters: p, recipients: recipients)
}

@Suite struct IntakeTests {
    let fixedClock: @Sendable () -> Int64 = { 1_795_943_877_436 }

    @Test func preparesTheStoredMessage() throws {
        let store = try Store(path: tempDB())
        defer { store.close() }
        let intake = Intake(store: store, hostname: "mx.test", clock: fixedClock)
        let body = ByteBuffer(string: "Subject: hi\r\nMessage-ID: <orig@x.test>\r\n\r\nbody\r\n")
        let m = intake.prepare(envelope(["b@Bücher.TEST"]), body: body, origin: .smtp, authUser: nil)
        let text = String(decoding: m.body, as: UTF8.self)
        #expect(text.hasPrefix("Received: from client.test ([192.0.2.7])\r\n\tby mx.test (Tern) with ESMTP id \(m.queueID)\r\n\tfor <b@Bücher.TEST>; Sun, 29 Nov 2026 09:17:57 +0000\r\nSubject: hi\r\n"))
        #expect(text.hasSuffix("\r\n\r\nbody\r\n"))
        #expect(m.headerMessageID == "orig@x.test")
        #expect(m.recipients == [NewRecipient(address: "b@Bücher.TEST", domain: "xn--bcher-kva.test", notify: "SUCCESS", orcpt: "rfc822;b@Bücher.TEST")])
        #expect(m.ret == "FULL" && m.envID == "ENV1" && m.bodyType == "8BITMIME")
        #expect(m.receivedAt == 1_795_943_877_436)
        #expect(m.origin == "smtp")
        #expect(m.mailFrom == "a@x.test")
        // SMTP mail is not rewritten: no Message-ID or Date is invented.
        let bare = intake.prepare(envelope(["b@local.test", "c@local.test"]), body: ByteBuffer(string: "x\r\n"), origin: .smtp, authUser: nil)
        let bareText = String(decoding: bare.body, as: UTF8.self)
        #expect(!bareText.contains("Message-ID:") && !bareText.contains("for <"))
        #expect(bare.headerMessageID == nil)
    }

    @Test func localSubmissionsGetMessageIDAndDate() throws {
        let store = try Store(path: tempDB())
        defer { store.close() }
        let intake = Intake(store: store, hostname: "mx.test", clock: fixedClock)
        let m = intake.prepare(envelope(["b@local.test"], from: nil), body: ByteBuffer(string: "Subject: s\r\n\r\nx\r\n"), origin: .local, authUser: nil)
        let text = String(decoding: m.body, as: UTF8.self)
        #expect(text.contains("Message-ID: <\(m.queueID)@mx.test>\r\n"))
        #expect(text.contains("Date: Sun, 29 Nov 2026 09:17:57 +0000\r\n"))
        #expect(text.hasPrefix("Received: by mx.test (Tern, from userid"))
        #expect(m.headerMessageID == "\(m.queueID)@mx.test")
        #expect(m.mailFrom == "")
        let kept = intake.prepare(envelope(["b@local.test"]), body: ByteBuffer(string: "Date: x\r\nMessage-ID: <k@x>\r\n\r\n"), origin: .local, authUser: nil)
        let keptText = String(decoding: kept.body, as: UTF8.self)
        #expect(!keptText.contains("Date: Sun"))
        #expect(kept.headerMessageID == "k@x")
    }

    @Test func acceptCommitsAndReturnsTheQueueID() async throws {
        let store = try Store(path: tempDB())
        defer { store.close() }
        let intake = Intake(store: store, hostname: "mx.test")
        let outcome = await intake.accept(envelope(["b@local.test"]), body: ByteBuffer(string: "x\r\n"), origin: .smtp)
        guard case .accepted(let qid) = outcome else { Issue.record("expected acceptance, got \(outcome)"); return }
        let body = try store.read { db in try Data.fetchOne(db, sql: "SELECT body FROM message WHERE queue_id = ?", arguments: [qid]) }
        #expect(String(decoding: body ?? Data(), as: UTF8.self).contains("id \(qid)"))
        #expect(try store.stateCounts() == [.queued: 1])
    }

    @Test func failedCommitsMapToTransientReplies() async throws {
        #expect(Intake.reply(for: .full("x")).wireText == "452 4.3.1 Error: insufficient system storage, try again later\r\n")
        #expect(Intake.reply(for: .io("x")).code == 451)
        #expect(Intake.reply(for: .io("x")).enhanced == .systemError)
        #expect(Intake.reply(for: .busy("x")).code == 451)
        let store = try Store(path: tempDB())
        defer { store.close() }
        let intake = Intake(store: store, hostname: "mx.test")
        let pages = try store.writeDirect { db in try Int.fetchOne(db, sql: "PRAGMA page_count") ?? 0 }
        _ = try store.writeDirect { db in try Int.fetchOne(db, sql: "PRAGMA max_page_count = \(pages + 2)") }
        let big = ByteBuffer(repeating: 65, count: 100_000)
        let outcome = await intake.accept(envelope(["b@local.test"]), body: big, origin: .smtp)
        guard case .rejected(let reply) = outcome else { Issue.record("expected refusal"); return }
        #expect(reply.code == 452 && reply.enhanced == .mailSystemFull)
        #expect(try store.stateCounts().isEmpty)
    }

    @Test func aHandoffLeasesAtIntakeAndGetsTheCommittedMessage() async throws {
        let store = try Store(path: tempDB())
        defer { store.close() }
        let handoff = RecordingHandoff(grant: true)
        let wakes = Atomic<Int>(0)
        let intake = Intake(store: store, hostname: "mx.test", handoff: handoff, onAccepted: { wakes.add(1, ordering: .relaxed) })
        let outcome = await intake.accept(envelope(["b@local.test", "c@other.test"]), body: ByteBuffer(string: "x\r\n"), origin: .smtp)
        guard case .accepted(let qid) = outcome else { Issue.record("expected acceptance, got \(outcome)"); return }
        #expect(await eventuallyTrue { handoff.log.withLock { $0.count } == 2 })
        #expect(handoff.log.withLock { $0 } == ["reserve \(qid)", "handOff \(qid) 2"])
        #expect(try store.stateCounts() == [.inflight: 2])
        // Nothing was queued the usual way, so the scheduler's pass is not woken.
        #expect(wakes.load(ordering: .relaxed) == 0)

        // Refused: queued, and the pass is woken.
        let refusing = RecordingHandoff(grant: false)
        let intake2 = Intake(store: store, hostname: "mx.test", handoff: refusing, onAccepted: { wakes.add(1, ordering: .relaxed) })
        _ = await intake2.accept(envelope(["d@local.test"]), body: ByteBuffer(string: "x\r\n"), origin: .smtp)
        #expect(await eventuallyTrue { wakes.load(ordering: .relaxed) == 1 })
        #expect(try store.stateCounts() == [.inflight: 2, .queued: 1])
    }

    @Test func aFailedCommitCancelsTheReservation() async throws {
        let store = try Store(path: tempDB())
        defer { store.close() }
        let handoff = RecordingHandoff(grant: true)
        let intake = Intake(store: store, hostname: "mx.test", handoff: handoff)
        let pages = try store.writeDirect { db in try Int.fetchOne(db, sql: "PRAGMA page_count") ?? 0 }
        _ = try store.writeDirect { db in try Int.fetchOne(db, sql: "PRAGMA max_page_count = \(pages + 2)") }
        let outcome = await intake.accept(envelope(["b@local.test"]), body: ByteBuffer(repeating: 65, count: 100_000), origin: .smtp)
        guard case .rejected = outcome else { Issue.record("expected refusal"); return }
        let log = handoff.log.withLock { $0 }
        #expect(log.count == 2 && log[0].hasPrefix("reserve ") && log[1].hasPrefix("cancel "))
    }
}

/// Records what intake asked of it; grants every lease or none.
final class RecordingHandoff: IntakeHandoff {
    let grant: Bool
    let log = Mutex<[String]>([])
    init(grant: Bool) { self.grant = grant }
    func reserve(_ message: NewMessage) -> IntakeLease? {
        log.withLock { $0.append("reserve \(message.queueID)") }
        return grant ? IntakeLease(owner: "test", until: Int64.max) : nil
    }
    func handOff(_ message: NewMessage, inserted: InsertedMessage) {
        log.withLock { $0.append("handOff \(message.queueID) \(inserted.leasedRecipientIDs.compactMap { $0 }.count)") }
    }
    func cancel(_ message: NewMessage) { log.withLock { $0.append("cancel \(message.queueID)") } }
}

/// Completions run after `accept` returns; waits (up to 5 s) for them.
func eventuallyTrue(_ condition: () -> Bool) async -> Bool {
    for _ in 0..<500 {
        if condition() { return true }
        try? await Task.sleep(for: .milliseconds(10))
    }
    return false
}
