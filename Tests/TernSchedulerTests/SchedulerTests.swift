import Foundation
import GRDB
import Synchronization
import Testing
import TernDelivery
import TernProtocol
@testable import TernScheduler
@testable import TernStore

/// A delivery agent whose outcomes follow the recipient's local part:
/// ok… delivered, temp… deferred, perm… bounced. Domains can be down (451)
/// or nonexistent (550). It counts connections and their concurrency.
final class FakeAgent: DeliveryAgent, @unchecked Sendable {
    let lock = NSLock()
    var down: Set<String> = []
    var gone: Set<String> = []
    var remoteDSN = false
    var breakAfterFirstMessage = false
    var allOK = false
    /// Sends to these domains wait until `releaseSlow()`.
    var slow: Set<String> = []
    /// Called at each send with the domain (a test advances its clock: a
    /// server slow per message).
    var onSend: (@Sendable (String) -> Void)? = nil
    private var slowWaiters: [CheckedContinuation<Void, Never>] = []
    private var slowOpen = false
    private(set) var connections = 0
    private(set) var open: [String: Int] = [:]
    private(set) var maxOpen: [String: Int] = [:]
    private(set) var sent: [OutboundMessage] = []
    /// Body bytes of the messages being sent now, and the most at once.
    private(set) var bodyBytesSending = 0
    private(set) var maxBodyBytesSending = 0
    /// The source each message in `sent` left from ("" for the kernel's choice).
    private(set) var sentFrom: [String] = []

    func connect(domain: String) async -> ConnectOutcome { lock.withLock { connectLocked(domain) } }

    /// Sources whose address "cannot be bound".
    var unbindable: Set<String> = []

    func connect(domain: String, requireTLS: Bool, source: OutboundSource?) async -> ConnectOutcome {
        lock.withLock {
            if let s = source, unbindable.contains(s.name) { return .sourceUnavailable("cannot bind \(s.address): Cannot assign requested address") }
            return connectLocked(domain, source: source?.name ?? "")
        }
    }

    private func connectLocked(_ domain: String, source: String = "") -> ConnectOutcome {
        if down.contains(domain) {
            return .failed(SMTPReply(451, EnhancedStatus(4, 4, 1), "connect to mx.\(domain) failed"), AttemptContext(mxHost: "mx.\(domain)", mxAddress: "127.0.0.9"))
        }
        if gone.contains(domain) { return .failed(SMTPReply(550, .badDestinationSystem, "Host or domain name not found"), AttemptContext()) }
        connections += 1
        open[domain, default: 0] += 1
        maxOpen[domain] = max(maxOpen[domain, default: 0], open[domain]!)
        return .connected(FakeConnection(agent: self, domain: domain, source: source))
    }

    func closed(_ domain: String) { lock.withLock { open[domain]! -= 1 } }

    func waitIfSlow(_ domain: String) async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let wait = lock.withLock { () -> Bool in
                guard slow.contains(domain), !slowOpen else { return false }
                slowWaiters.append(c)
                return true
            }
            if !wait { c.resume() }
        }
    }

    func releaseSlow() {
        let waiters = lock.withLock { () -> [CheckedContinuation<Void, Never>] in
            slowOpen = true
            defer { slowWaiters = [] }
            return slowWaiters
        }
        waiters.forEach { $0.resume() }
    }
    func sending(_ m: OutboundMessage, _ starts: Bool) {
        lock.withLock {
            bodyBytesSending += starts ? m.body.count : -m.body.count
            maxBodyBytesSending = max(maxBodyBytesSending, bodyBytesSending)
        }
    }
    func record(_ m: OutboundMessage, from source: String = "") {
        lock.withLock {
            sent.append(m)
            sentFrom.append(source)
        }
    }
}

final class FakeConnection: DeliveryConnection, @unchecked Sendable {
    let agent: FakeAgent
    let domain: String
    var source = ""
    var messages = 0
    init(agent: FakeAgent, domain: String, source: String = "") { self.agent = agent; self.domain = domain; self.source = source }
    var context: AttemptContext { AttemptContext(mxHost: "mx.\(domain)", mxAddress: "127.0.0.1", tls: nil, remoteDSN: agent.remoteDSN) }
    var isReusable: Bool { !(agent.breakAfterFirstMessage && messages >= 1) }
    func send(_ m: OutboundMessage) async -> [Int64: RecipientOutcome] {
        agent.onSend?(domain)
        agent.sending(m, true)
        await agent.waitIfSlow(domain)
        agent.sending(m, false)
        messages += 1
        agent.record(m, from: source)
        var out: [Int64: RecipientOutcome] = [:]
        for r in m.envelope.recipients {
            let local = r.address.prefix { $0 != "@" }
            if agent.allOK || local.hasPrefix("ok") { out[r.id] = .delivered(SMTPReply(250, .ok, "queued as X")) }
            else if local.hasPrefix("temp") { out[r.id] = .deferred(SMTPReply(451, EnhancedStatus(4, 2, 1), "mailbox busy")) }
            // Yahoo's texts (postmaster.yahooinc.com/error-codes): a volume deferral and a reputation block.
            else if local.hasPrefix("tss04") {
                out[r.id] = .deferred(SMTPReply(421, EnhancedStatus(4, 7, 0),
                    "[TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes"))
            } else if local.hasPrefix("tss09") {
                out[r.id] = .bounced(SMTPReply(553, EnhancedStatus(5, 7, 2),
                    "[TSS09] All messages from 192.0.2.1 will be permanently deferred; Retrying will NOT succeed. See https://postmaster.yahooinc.com/error-codes"))
            }
            else { out[r.id] = .bounced(SMTPReply(550, .badDestinationMailbox, "no such user")) }
        }
        return out
    }
    func close() async { agent.closed(domain) }
}

struct Harness {
    let store: Store
    let clock: ManualClock
    let agent = FakeAgent()
    let scheduler: Scheduler

    init(_ edit: (inout SchedulerConfig) -> Void = { _ in }) throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("tern-sched-\(UUID().uuidString)/t.sqlite").path
        try self.init(store: try Store(path: path), clock: ManualClock(), edit)
    }

    /// Another scheduler (a restart) over the same store and clock.
    init(store: Store, clock: ManualClock, _ edit: (inout SchedulerConfig) -> Void = { _ in }) throws {
        self.store = store
        self.clock = clock
        var config = SchedulerConfig(hostname: "mx.tern.test")
        edit(&config)
        scheduler = Scheduler(store: store, agent: agent, config: config, clock: clock, random: { 0.5 }) // no jitter
    }

    @discardableResult
    func submit(_ rcpts: [String], from: String = "alice@sender.test", notify: String? = nil, orcpt: Bool = false, ret: String? = nil,
                bodyLines: Int = 1) async throws -> Int64 {
        let recipients = rcpts.map { NewRecipient(address: $0, domain: String($0.split(separator: "@")[1]), notify: notify, orcpt: orcpt ? "rfc822;orig-\($0)" : nil) }
        let m = NewMessage(queueID: UUID().uuidString, receivedAt: clock.now(), mailFrom: from,
                           body: Data(("Subject: test\r\nMessage-ID: <orig@sender.test>\r\n\r\n" + String(repeating: "body line\r\n", count: bodyLines)).utf8),
                           clientAddress: "127.0.0.1", helo: "c", headerMessageID: "orig@sender.test", envID: "ENV-1", ret: ret,
                           bodyType: nil, smtputf8: false, origin: "smtp", recipients: recipients)
        return try await store.insertMessage(m)
    }

    func rows(_ sql: String) throws -> [Row] { try store.read { db in try Row.fetchAll(db, sql: sql) } }
    func state(_ address: String) throws -> String? { try rows("SELECT state FROM recipient WHERE address = '\(address)'").first?[0] }
    func dsns() throws -> [Row] { try rows("SELECT m.id, m.mail_from, m.body, m.dsn_for, r.address, r.notify FROM message m JOIN recipient r ON r.message_id = m.id WHERE m.origin = 'dsn' ORDER BY m.id") }
}

@Suite struct PolicyTests {
    @Test func retryScheduleDoublesToTheCap() {
        let r = RetrySchedule()
        #expect((1...7).map { r.delay(afterAttempt: $0, random: 0.5) } == [300_000, 600_000, 1_200_000, 2_400_000, 4_000_000, 4_000_000, 4_000_000])
        #expect(r.delay(afterAttempt: 1, random: 0) == 270_000)       // -10 %
        #expect(r.delay(afterAttempt: 1, random: 0.999_999) == 329_999) // +10 %
        #expect(r.delay(afterAttempt: 1000, random: 0.5) == 4_000_000)
    }

    /// The jitter's random number costs a getrandom(2) system call: only a
    /// deferral, which schedules a retry, draws one.
    @Test func onlyADeferralDrawsARandomNumber() {
        let r = ClaimedRecipient(id: 1, messageID: 1, address: "u@example.test", domain: "example.test", attempts: 0,
                                 notify: nil, orcpt: nil, createdAt: 1_000, delayNotifiedAt: nil)
        var draws = 0
        func draw() -> Double { draws += 1; return 0.5 }
        let ok = SMTPReply(250, .ok, "queued")
        let temp = SMTPReply(451, .systemError, "try later")
        let perm = SMTPReply(550, .badDestinationMailbox, "no such user")
        _ = Policy.decide(.delivered(ok), for: r, sender: "s@example.test", context: AttemptContext(), now: 2_000, config: PolicyConfig(), random: draw())
        _ = Policy.decide(.bounced(perm), for: r, sender: "s@example.test", context: AttemptContext(), now: 2_000, config: PolicyConfig(), random: draw())
        #expect(draws == 0)
        let deferred = Policy.decide(.deferred(temp), for: r, sender: "s@example.test", context: AttemptContext(), now: 2_000,
                                     config: PolicyConfig(), random: draw())
        #expect(draws == 1)
        #expect(deferred.transition.nextAttemptAt == Int64(302_000)) // 5 minutes, no jitter at 0.5
    }

    @Test func notifyDefaults() {
        let d = NotifyPolicy(nil)
        #expect(!d.never && !d.success && d.failure && d.delay)
        let s = NotifyPolicy("SUCCESS")
        #expect(s.success && !s.failure && !s.delay)
        #expect(NotifyPolicy("NEVER").never)
    }
}

@Suite struct SchedulerTests {
    @Test func deliveredWritesAttemptStateAndEvent() async throws {
        let h = try Harness()
        try await h.submit(["ok1@a.test", "ok2@a.test"])
        await h.scheduler.runDue()
        #expect(try h.state("ok1@a.test") == "delivered")
        #expect(try h.state("ok2@a.test") == "delivered")
        #expect(h.agent.sent.count == 1) // both recipients in one SMTP transaction
        let attempt = try #require(try h.rows("SELECT outcome, mx_host, mx_address, code, enhanced FROM attempt ORDER BY id").first)
        #expect(attempt[0] as String == "delivered" && attempt[1] as String == "mx.a.test" && attempt[3] as Int == 250)
        #expect(try h.rows("SELECT count(*) FROM event WHERE kind = 'delivered'").first?[0] as Int? == 2)
        #expect(try h.rows("SELECT count(*) FROM recipient WHERE final_at IS NOT NULL AND attempts = 1 AND lease_owner IS NULL").first?[0] as Int? == 2)
        #expect(try h.dsns().isEmpty)
    }

    @Test func deferredRecipientsWaitForTheirRetryTime() async throws {
        let h = try Harness()
        try await h.submit(["temp@b.test"])
        let t0 = h.clock.now()
        await h.scheduler.runDue()
        #expect(try h.state("temp@b.test") == "deferred")
        #expect(try h.rows("SELECT next_attempt_at FROM recipient").first?[0] as Int64? == t0 + 300_000)
        await h.scheduler.runDue()
        #expect(h.agent.connections == 1) // not due: nothing was tried
        h.clock.advance(seconds: 299)
        await h.scheduler.runDue()
        #expect(h.agent.connections == 1)
        h.clock.advance(seconds: 1)
        await h.scheduler.runDue()
        #expect(h.agent.connections == 2)
        #expect(try h.rows("SELECT next_attempt_at - \(t0) FROM recipient").first?[0] as Int64? == 300_000 + 600_000)
        h.agent.allOK = true
        h.clock.advance(seconds: 600)
        await h.scheduler.runDue()
        #expect(try h.state("temp@b.test") == "delivered")
        #expect(try h.rows("SELECT attempts FROM recipient").first?[0] as Int? == 3)
        #expect(try h.rows("SELECT group_concat(outcome) FROM (SELECT outcome FROM attempt ORDER BY id)").first?[0] as String? == "deferred,deferred,delivered")
        #expect(try h.rows("SELECT group_concat(kind) FROM (SELECT kind FROM event WHERE recipient_id IS NOT NULL ORDER BY id)").first?[0] as String? == "deferred,deferred,delivered")
    }

    @Test func bounceQueuesOneDSNInTheSameTransaction() async throws {
        let h = try Harness()
        let id = try await h.submit(["perm1@c.test", "perm2@c.test", "ok@c.test"], orcpt: true)
        await h.scheduler.runDue()
        #expect(try h.state("perm1@c.test") == "bounced")
        let dsns = try h.dsns()
        #expect(dsns.count == 1)
        let dsn = try #require(dsns.first)
        #expect(dsn[1] as String == "")                      // from the null sender
        #expect(dsn[3] as Int64 == id)                       // dsn_for
        #expect(dsn[4] as String == "alice@sender.test")     // to the original sender
        #expect(dsn[5] as String == "NEVER")
        let text = String(decoding: dsn[2] as Data, as: UTF8.self)
        #expect(text.contains("Content-Type: multipart/report; report-type=delivery-status;"))
        #expect(text.contains("Final-Recipient: rfc822; perm1@c.test\r\nOriginal-Recipient: rfc822; orig-perm1@c.test\r\nAction: failed\r\nStatus: 5.1.1\r\nRemote-MTA: dns; mx.c.test\r\nDiagnostic-Code: smtp; 550 5.1.1 no such user"))
        #expect(text.contains("perm2@c.test") && !text.contains("Final-Recipient: rfc822; ok@c.test"))
        #expect(text.contains("Original-Envelope-Id: ENV-1"))
        #expect(text.contains("Content-Type: text/rfc822-headers\r\n\r\nSubject: test\r\n")) // RET=HDRS by default
        #expect(!text.contains("body line"))
        #expect(try h.rows("SELECT count(*) FROM event WHERE kind = 'dsn_queued' AND message_id = \(id)").first?[0] as Int? == 1)
        // The DSN is itself queued for delivery to the sender's domain.
        #expect(try h.rows("SELECT domain, state FROM recipient WHERE address = 'alice@sender.test'").first?[0] as String? == "sender.test")
    }

    @Test func retFullReturnsTheWholeMessage() async throws {
        let h = try Harness()
        try await h.submit(["perm@c.test"], ret: "FULL")
        await h.scheduler.runDue()
        let text = String(decoding: try h.dsns().first?[2] as Data? ?? Data(), as: UTF8.self)
        #expect(text.contains("Content-Type: message/rfc822\r\n\r\nSubject: test\r\n"))
        #expect(text.contains("body line"))
    }

    @Test func noDSNForTheNullSenderOrNotifyNever() async throws {
        let h = try Harness()
        try await h.submit(["perm1@c.test"], from: "")
        try await h.submit(["perm2@c.test"], notify: "NEVER")
        try await h.submit(["perm3@c.test"], notify: "SUCCESS") // failure not asked for
        await h.scheduler.runDue()
        #expect(try h.rows("SELECT count(*) FROM recipient WHERE state = 'bounced'").first?[0] as Int? == 3)
        #expect(try h.dsns().isEmpty)
    }

    @Test func successDSNOnlyWhenTheNextHopCannotSendOne() async throws {
        let h = try Harness()
        try await h.submit(["ok@d.test"], notify: "SUCCESS")
        await h.scheduler.runDue()
        let text = String(decoding: try h.dsns().first?[2] as Data? ?? Data(), as: UTF8.self)
        #expect(text.contains("Action: relayed\r\nStatus: 2.0.0"))
        let h2 = try Harness()
        h2.agent.remoteDSN = true // NOTIFY went on to the next hop (RFC 3461 §6.2.2)
        try await h2.submit(["ok@d.test"], notify: "SUCCESS")
        await h2.scheduler.runDue()
        #expect(try h2.dsns().isEmpty)
    }

    @Test func delayDSNOnceThenExpiryWith447() async throws {
        let h = try Harness()
        try await h.submit(["temp@e.test"])
        var delayed = 0
        // Retry for five days; every attempt defers.
        for _ in 0..<200 {
            await h.scheduler.runDue()
            delayed = try h.dsns().filter { String(decoding: $0[2] as Data, as: UTF8.self).contains("Action: delayed") }.count
            if try h.state("temp@e.test") == "expired" { break }
            guard let next = try h.rows("SELECT next_attempt_at FROM recipient WHERE address = 'temp@e.test'").first?[0] as Int64? else { break }
            h.clock.advance(ms: max(0, next - h.clock.now()))
        }
        #expect(try h.state("temp@e.test") == "expired")
        #expect(delayed == 1) // exactly one delay notice
        let r = try #require(try h.rows("SELECT last_enhanced, created_at, final_at, delay_notified_at FROM recipient WHERE address = 'temp@e.test'").first)
        #expect(r[0] as String == "4.4.7")
        #expect((r[2] as Int64) - (r[1] as Int64) == 5 * 86_400_000) // the last try is at the lifetime, not later
        #expect((r[3] as Int64) - (r[1] as Int64) >= 4 * 3_600_000)
        let failed = try h.dsns().map { String(decoding: $0[2] as Data, as: UTF8.self) }.filter { $0.contains("Action: failed") }
        #expect(failed.count == 1)
        #expect(failed.first?.contains("Status: 4.4.7") == true)
        #expect(try h.rows("SELECT count(*) FROM event WHERE kind = 'expired'").first?[0] as Int? == 1)
    }

    @Test func unreachableAndNonexistentDestinations() async throws {
        let h = try Harness { $0.claimBatch = 2 }
        h.agent.down = ["down.test"]
        h.agent.gone = ["gone.test"]
        for i in 0..<5 { try await h.submit(["u\(i)@down.test"]) }
        try await h.submit(["x@gone.test"])
        await h.scheduler.runDue()
        // Every due recipient of the dead domain is deferred in this pass, not one batch.
        #expect(try h.rows("SELECT count(*) FROM recipient WHERE domain = 'down.test' AND state = 'deferred' AND last_code = 451").first?[0] as Int? == 5)
        #expect(try h.rows("SELECT count(*) FROM attempt a JOIN recipient r ON r.id = a.recipient_id WHERE r.domain = 'down.test' AND a.mx_host = 'mx.down.test'").first?[0] as Int? == 5)
        #expect(try h.state("x@gone.test") == "bounced")
        #expect(try h.dsns().count == 1)
    }

    @Test func connectionsAreReusedAndLimited() async throws {
        let h = try Harness { c in
            c.maxConnectionsPerDestination = 3
            c.messagesPerConnection = 5
            c.claimBatch = 2
        }
        for i in 0..<40 { try await h.submit(["ok\(i)@f.test"]) }
        try await h.submit(["ok@g.test"])
        await h.scheduler.runDue()
        for _ in 0..<50 where try h.rows("SELECT count(*) FROM recipient WHERE state = 'queued'").first?[0] as Int? ?? 0 > 0 {
            await h.scheduler.runDue() // bounded: a regression fails the test instead of hanging it
        }
        #expect(try h.rows("SELECT count(*) FROM recipient WHERE state = 'delivered'").first?[0] as Int? == 41)
        #expect(h.agent.maxOpen["f.test"]! <= 3)
        #expect(h.scheduler.runningWorkers == 0) // finished workers are not kept
        #expect(h.agent.connections >= 9) // 40 messages, 5 per connection, plus g.test
        #expect(h.agent.sent.count == 41)
    }

    /// Claimed mail near a connection's message limit: a message's
    /// recipients still go out in one transaction (a claim limited to the
    /// messages left split them, one transaction per recipient).
    @Test func aMessageIsNotSplitNearTheConnectionLimit() async throws {
        let h = try Harness { c in c.messagesPerConnection = 3 }
        for m in 0..<5 { try await h.submit((0..<4).map { "ok\(m)-\($0)@f.test" }) }
        await h.scheduler.runDue()
        for _ in 0..<50 where try h.rows("SELECT count(*) FROM recipient WHERE state <> 'delivered'").first?[0] as Int? ?? 0 > 0 {
            await h.scheduler.runDue()
        }
        #expect(try h.rows("SELECT count(*) FROM recipient WHERE state = 'delivered'").first?[0] as Int? == 20)
        #expect(h.agent.sent.count == 5)
        #expect(h.agent.sent.allSatisfy { $0.envelope.recipients.count == 4 })
    }

    /// One slow destination holds only its own connections.
    @Test func aSlowDomainDoesNotHoldBackOthers() async throws {
        let h = try Harness { $0.maxConnectionsPerDestination = 2; $0.maxConnections = 4 }
        h.agent.slow = ["slow.test"]
        for i in 0..<10 { try await h.submit(["ok\(i)@slow.test"]) }
        try await h.submit(["ok@fast.test"])
        let pass = Task { await h.scheduler.runDue() }
        // fast.test is delivered while slow.test's sends are still hanging.
        var fastDone = false
        for _ in 0..<500 {
            if try h.state("ok@fast.test") == "delivered" { fastDone = true; break }
            try await Task.sleep(for: .milliseconds(10))
        }
        #expect(fastDone)
        #expect(try h.rows("SELECT count(*) FROM recipient WHERE domain = 'slow.test' AND state = 'delivered'").first?[0] as Int? == 0)
        #expect(h.agent.maxOpen["slow.test"] ?? 0 <= 2)
        h.agent.releaseSlow()
        await pass.value
        for _ in 0..<50 where try h.rows("SELECT count(*) FROM recipient WHERE state <> 'delivered'").first?[0] as Int? ?? 0 > 0 {
            await h.scheduler.runDue()
        }
        #expect(try h.rows("SELECT count(*) FROM recipient WHERE domain = 'slow.test' AND state = 'delivered'").first?[0] as Int? == 10)
    }

    /// A server that takes a second per message (issue 21's `internet`
    /// benchmark: a slow final-dot reply) gets a connection per two due
    /// messages, each taking two at a time, up to the destination's limit;
    /// to a fast one the first connection takes a whole claim batch (the
    /// others it was given find nothing and open none).
    @Test func aServerSlowPerMessageGetsMoreConnectionsAndSmallerBatches() async throws {
        let h = try Harness { $0.maxConnectionsPerDestination = 8; $0.claimBatch = 20 }
        let clock = h.clock
        h.agent.onSend = { domain in if domain == "tar.test" { clock.advance(ms: 1_000) } }
        // One message each first, one destination at a time (the clock is
        // shared: quick.test's send must not span tar.test's second): the
        // scheduler learns how long a message takes.
        try await h.submit(["ok@quick.test"])
        await h.scheduler.runDue()
        try await h.submit(["ok@tar.test"])
        await h.scheduler.runDue()
        #expect(try h.rows("SELECT count(*) FROM recipient WHERE state = 'delivered'").first?[0] as Int? == 2)
        // Then 16 each, with the sends held so that every worker started is seen open.
        h.agent.slow = ["tar.test", "quick.test"]
        for i in 0..<16 { try await h.submit(["ok\(i)@tar.test"]); try await h.submit(["ok\(i)@quick.test"]) }
        let pass = Task { await h.scheduler.runDue() }
        for _ in 0..<500 where (h.agent.lock.withLock { h.agent.open["tar.test"] ?? 0 }) < 8 { try await Task.sleep(for: .milliseconds(5)) }
        try await Task.sleep(for: .milliseconds(50))
        #expect(h.agent.lock.withLock { h.agent.open["tar.test"] ?? 0 } == 8) // 16 due, one connection per two
        #expect(h.agent.lock.withLock { h.agent.open["quick.test"] ?? 0 } == 1) // 16 due, all in one claim of up to 20
        h.agent.releaseSlow()
        await pass.value
        for _ in 0..<50 where try h.rows("SELECT count(*) FROM recipient WHERE state <> 'delivered'").first?[0] as Int? ?? 0 > 0 {
            await h.scheduler.runDue()
        }
        #expect(try h.rows("SELECT count(*) FROM recipient WHERE state = 'delivered'").first?[0] as Int? == 34)
        #expect(h.agent.maxOpen["tar.test"] == 8)
    }

    @Test func untriedRecipientsAreReleasedWhenAConnectionBreaks() async throws {
        let h = try Harness { $0.claimBatch = 10; $0.maxConnectionsPerDestination = 1 }
        h.agent.breakAfterFirstMessage = true
        for i in 0..<3 { try await h.submit(["ok\(i)@h.test"]) }
        await h.scheduler.runDue()
        #expect(try h.rows("SELECT count(*) FROM recipient WHERE state = 'delivered'").first?[0] as Int? == 1)
        #expect(try h.rows("SELECT count(*) FROM recipient WHERE state = 'queued' AND attempts = 0 AND lease_owner IS NULL").first?[0] as Int? == 2)
        await h.scheduler.runDue()
        await h.scheduler.runDue()
        #expect(try h.rows("SELECT count(*) FROM recipient WHERE state = 'delivered'").first?[0] as Int? == 3)
    }

    @Test func leasesOfADeadInstanceAreRecovered() async throws {
        let h = try Harness()
        let id = try await h.submit(["ok@i.test"])
        try h.store.writeDirect { db in
            try db.execute(sql: "UPDATE recipient SET state = 'inflight', lease_owner = 'dead', lease_expires_at = ? WHERE message_id = ?",
                           arguments: [h.clock.now() + 600_000, id])
        }
        await h.scheduler.runDue()
        #expect(try h.state("ok@i.test") == "inflight") // the lease is still valid for a live owner
        #expect(try await h.store.recoverLeases(now: h.clock.now(), owner: h.scheduler.owner, everyOtherOwner: true) == 1)
        #expect(try h.rows("SELECT count(*) FROM event WHERE kind = 'lease_expired'").first?[0] as Int? == 1)
        await h.scheduler.runDue()
        #expect(try h.state("ok@i.test") == "delivered")
        // A lease that simply runs out is swept by the next pass.
        let id2 = try await h.submit(["ok2@i.test"])
        try h.store.writeDirect { db in
            try db.execute(sql: "UPDATE recipient SET state = 'inflight', lease_owner = 'x', lease_expires_at = ? WHERE message_id = ?",
                           arguments: [h.clock.now() - 1, id2])
        }
        await h.scheduler.runDue()
        await h.scheduler.runDue()
        #expect(try h.state("ok2@i.test") == "delivered")
    }
}

@Suite struct QueueAdminTests {
    @Test func holdReleaseFlushBounceDelete() async throws {
        let h = try Harness()
        let admin = QueueAdmin(store: h.store, hostname: "mx.tern.test")
        let first = try await h.submit(["ok1@j.test", "ok2@k.test"])
        let queueID = try #require(try h.rows("SELECT queue_id FROM message WHERE id = \(first)").first?[0] as String?)
        // hold by domain: the k.test recipient waits, j.test goes.
        #expect(try await admin.hold(.domain("k.test"), now: h.clock.now()) == AdminResult(changed: 1, inflight: 0))
        await h.scheduler.runDue()
        #expect(try h.state("ok1@j.test") == "delivered")
        #expect(try h.state("ok2@k.test") == "held")
        #expect(try await admin.release(.queueID(queueID), now: h.clock.now()).changed == 1)
        await h.scheduler.runDue()
        #expect(try h.state("ok2@k.test") == "delivered")
        // flush makes a deferred recipient due now.
        try await h.submit(["temp@l.test"])
        await h.scheduler.runDue()
        #expect(try await admin.flush(.all, now: h.clock.now()).changed == 1)
        #expect(try h.rows("SELECT next_attempt_at FROM recipient WHERE address = 'temp@l.test'").first?[0] as Int64? == h.clock.now())
        // bounce: fails it now, with a DSN (default NOTIFY includes FAILURE).
        #expect(try await admin.bounce(.domain("l.test"), now: h.clock.now()).changed == 1)
        #expect(try h.state("temp@l.test") == "bounced")
        #expect(try h.rows("SELECT last_code, last_enhanced, attempts FROM recipient WHERE address = 'temp@l.test'").first.map { "\($0[0] as Int) \($0[1] as String) \($0[2] as Int)" } == "550 5.0.0 1")
        #expect(try h.dsns().count == 1)
        // delete: gone, with an event left in the log.
        let doomed = try await h.submit(["x@m.test"])
        #expect(try await admin.delete(.domain("m.test"), now: h.clock.now()).changed == 1)
        #expect(try h.rows("SELECT count(*) FROM message WHERE id = \(doomed)").first?[0] as Int? == 0)
        #expect(try h.rows("SELECT count(*) FROM event WHERE kind = 'deleted' AND message_id = \(doomed)").first?[0] as Int? == 1)
        for kind in ["held", "released", "flushed", "bounced", "dsn_queued"] {
            #expect(try h.rows("SELECT count(*) FROM event WHERE kind = '\(kind)'").first?[0] as Int? ?? 0 >= 1, "\(kind)")
        }
    }

    @Test func recipientsInFlightAreLeftAlone() async throws {
        let h = try Harness()
        let admin = QueueAdmin(store: h.store, hostname: "mx.tern.test")
        let id = try await h.submit(["a@n.test", "b@n.test"])
        try h.store.writeDirect { db in
            try db.execute(sql: "UPDATE recipient SET state = 'inflight', lease_owner = 'w', lease_expires_at = ? WHERE address = 'a@n.test'", arguments: [h.clock.now() + 60_000])
        }
        #expect(try await admin.hold(.domain("n.test"), now: h.clock.now()) == AdminResult(changed: 1, inflight: 1))
        #expect(try await admin.delete(.domain("n.test"), now: h.clock.now()) == AdminResult(changed: 1, inflight: 1))
        #expect(try h.state("a@n.test") == "inflight")
        #expect(try h.rows("SELECT count(*) FROM message WHERE id = \(id)").first?[0] as Int? == 1) // still has a recipient
    }
}

/// Issue 15, item 3: double delivery without a crash.
@Suite struct LeaseTests {
    /// A delivery slower than the lease: the pass that runs meanwhile renews
    /// the lease instead of sweeping it, so the message goes out once.
    /// Before: the sweep returned the recipient, a second worker sent it again.
    @Test func aDeliverySlowerThanTheLeaseIsSentOnce() async throws {
        let h = try Harness { $0.leaseMillis = 600_000 }
        h.agent.slow = ["slow.test"]
        try await h.submit(["ok@slow.test"])
        let first = Task { await h.scheduler.runDue() }
        // Claimed and connected: the worker now waits for the slow remote.
        for _ in 0..<1000 where h.agent.lock.withLock({ h.agent.connections }) == 0 { try await Task.sleep(for: .milliseconds(2)) }
        #expect(try h.state("ok@slow.test") == "inflight")
        h.clock.advance(ms: 11 * 60_000) // the remote answers after the lease time
        await h.scheduler.startDueWorkers() // a pass: renew, sweep, start workers for due mail
        let expiresAt: Int64? = try h.rows("SELECT lease_expires_at FROM recipient").first?[0]
        #expect(expiresAt == h.clock.now() + 600_000)
        h.agent.releaseSlow()
        await first.value
        await h.scheduler.runDue()
        #expect(h.agent.sent.count == 1)
        #expect(try h.state("ok@slow.test") == "delivered")
        #expect(try h.rows("SELECT count(*) FROM event WHERE kind = 'lease_expired'").first?[0] == 0)
    }

    /// Every outcome write is fenced by state and lease owner: a worker whose
    /// lease was swept and whose recipient an operator then bounced cannot
    /// undo the bounce or count the recipient twice; its write becomes a
    /// `lease_lost` event.
    @Test func aStaleOutcomeNeverOverwritesALaterState() async throws {
        let h = try Harness()
        let id = try await h.submit(["ok@y.test"], notify: "FAILURE")
        let claimed = try await h.store.claim(domain: "y.test", now: h.clock.now(), owner: "worker-a", leaseUntil: h.clock.now() + 1_000, limit: 10)
        #expect(claimed.count == 1)
        h.clock.advance(ms: 2_000)
        #expect(try await h.store.recoverLeases(now: h.clock.now(), owner: "sweeper", everyOtherOwner: false) == 1)
        let admin = QueueAdmin(store: h.store, hostname: "mx.tern.test")
        _ = id
        #expect(try await admin.bounce(.domain("y.test"), now: h.clock.now()).changed == 1)
        let dsnsAfterBounce = try h.dsns().count
        // The slow worker comes back with "delivered".
        var batch = OutcomeBatch(at: h.clock.now())
        batch.leaseOwner = "worker-a"
        let d = Policy.decide(.delivered(SMTPReply(250, .ok, "ok")), for: claimed[0], sender: "alice@sender.test",
                              context: AttemptContext(), now: h.clock.now(), config: PolicyConfig(), random: 0.5)
        batch.transitions = [d.transition]
        try await h.store.record(batch)
        #expect(try h.state("ok@y.test") == "bounced")
        #expect(try h.rows("SELECT count(*) FROM event WHERE kind = 'lease_lost'").first?[0] == 1)
        #expect(try h.rows("SELECT count(*) FROM event WHERE kind = 'delivered'").first?[0] == 0)
        #expect(try h.dsns().count == dsnsAfterBounce)
        let finals: [Row] = try h.rows("SELECT delivered, bounced FROM recipient_daily")
        #expect(finals.count == 1 && finals[0][0] == 0 && finals[0][1] == 1)
        // The same holds for a transition whose owner never held the lease.
        let other = try await h.submit(["ok2@y.test"])
        let mine = try await h.store.claim(domain: "y.test", now: h.clock.now(), owner: "worker-b", leaseUntil: h.clock.now() + 60_000, limit: 10)
        #expect(mine.map(\.messageID) == [other])
        var wrong = OutcomeBatch(at: h.clock.now())
        wrong.leaseOwner = "worker-c"
        wrong.transitions = [Policy.decide(.delivered(SMTPReply(250, .ok, "ok")), for: mine[0], sender: "", context: AttemptContext(),
                                           now: h.clock.now(), config: PolicyConfig(), random: 0.5).transition]
        try await h.store.record(wrong)
        #expect(try h.state("ok2@y.test") == "inflight")
    }
}

/// The budget of bodies delivery workers read back from the store (BodyMemory.swift).
@Suite struct BodyMemoryTests {
    @Test func reservationsFitTheLimitAndOneLargerBodyGoesAlone() {
        let m = BodyMemory(limit: 100)
        #expect(m.tryReserve(60))
        #expect(m.tryReserve(40))
        #expect(!m.tryReserve(1))
        m.release(100)
        #expect(m.inUse == 0)
        // Larger than the whole budget: taken only when nothing else is held.
        #expect(m.tryReserve(10))
        #expect(!m.tryReserve(500))
        m.release(10)
        #expect(m.tryReserve(500))
        #expect(!m.tryReserve(1))
        m.release(500)
        #expect(m.inUse == 0 && m.peak == 500 && m.waits == 0)
    }

    /// A budget of 100 with `held` taken, then two reservations waiting in
    /// this order (`first`, then `second`).
    private func lineUp(held: Int, first: Int, second: Int) async throws -> (BodyMemory, Task<Bool, Never>, Task<Bool, Never>) {
        let m = BodyMemory(limit: 100)
        #expect(m.tryReserve(held))
        let a = Task { await m.reserve(first) }
        for _ in 0..<500 where m.waiting < 1 { try await Task.sleep(for: .milliseconds(2)) }
        let b = Task { await m.reserve(second) }
        for _ in 0..<500 where m.waiting < 2 { try await Task.sleep(for: .milliseconds(2)) }
        return (m, a, b)
    }

    @Test func waitersGetInFirstComeFirstServedAndNobodyJumpsTheLine() async throws {
        let (m, big, small) = try await lineUp(held: 90, first: 80, second: 5)
        #expect(m.waiting == 2)
        // 5 bytes would fit now, but two wait before: no way round them.
        #expect(!m.tryReserve(5))
        m.release(90)
        #expect(await big.value)
        #expect(await small.value)
        #expect(m.inUse == 85 && m.waits == 2 && m.waiting == 0)
        m.release(85)
        #expect(m.inUse == 0)
    }

    @Test func aCancelledWaiterHoldsNothingAndLetsTheNextIn() async throws {
        let (m, big, small) = try await lineUp(held: 50, first: 80, second: 40)
        #expect(m.waiting == 2)
        big.cancel()
        #expect(await big.value == false)
        // The one behind it fits beside the 50 held.
        #expect(await small.value)
        #expect(m.inUse == 90 && m.waiting == 0)
        m.release(90)
        #expect(m.inUse == 0)
    }

    /// About 1.1 MB each, read back by BLOB I/O (above Store.largeBody).
    static let lines = 100_000

    @Test func bodiesReadBackForSendingStayWithinTheBudget() async throws {
        let h = try Harness { $0.bodyMemory = 2_400_000 } // two bodies, not three
        let domains = (0..<8).map { "d\($0).test" }
        h.agent.slow = Set(domains)
        for d in domains { try await h.submit(["ok@\(d)"], bodyLines: Self.lines) }
        let size = try #require(h.rows("SELECT length(body) FROM message").first?[0] as Int?)
        #expect(size > Store.largeBody && 2 * size <= 2_400_000 && 3 * size > 2_400_000)
        let pass = Task { await h.scheduler.runDue() }
        // Two sends hang holding their bodies; the six other connections wait their turn.
        for _ in 0..<1000 where h.scheduler.bodyMemory.waiting < 6 || h.agent.lock.withLock({ h.agent.bodyBytesSending }) < 2 * size {
            try await Task.sleep(for: .milliseconds(5))
        }
        #expect(h.scheduler.bodyMemory.waiting == 6)
        #expect(h.agent.lock.withLock { h.agent.bodyBytesSending } == 2 * size)
        #expect(h.scheduler.bodyMemory.inUse == 2 * size)
        h.agent.releaseSlow()
        await pass.value
        #expect(try h.rows("SELECT count(*) FROM recipient WHERE state = 'delivered'").first?[0] as Int? == 8)
        #expect(h.agent.maxBodyBytesSending == 2 * size)
        #expect(h.agent.sent.allSatisfy { $0.body.count == size })
        #expect(h.scheduler.bodyMemory.peak == 2 * size)
        #expect(h.scheduler.bodyMemory.waits >= 6)
        #expect(h.scheduler.bodyMemory.inUse == 0) // every body given back
    }

    /// A body larger than the whole budget is not stuck: it goes when
    /// nothing else is held, one at a time.
    @Test func bodiesLargerThanTheBudgetGoOneAtATime() async throws {
        let h = try Harness { $0.bodyMemory = 1_000 }
        let domains = (0..<3).map { "big\($0).test" }
        h.agent.slow = Set(domains)
        for d in domains { try await h.submit(["ok@\(d)"], bodyLines: Self.lines) }
        let pass = Task { await h.scheduler.runDue() }
        for _ in 0..<1000 where h.scheduler.bodyMemory.waiting < 2 { try await Task.sleep(for: .milliseconds(5)) }
        #expect(h.scheduler.bodyMemory.waiting == 2)
        h.agent.releaseSlow()
        await pass.value
        #expect(try h.rows("SELECT count(*) FROM recipient WHERE state = 'delivered'").first?[0] as Int? == 3)
        let size = h.agent.sent[0].body.count
        #expect(h.agent.maxBodyBytesSending == size)
        #expect(h.scheduler.bodyMemory.inUse == 0)
    }

    /// Recording an outcome without a connection (the destination is down
    /// or gone) leaves a large body in the store; a DSN reads it whole.
    @Test func aLargeBodyIsReadForADSNNotForADeferral() async throws {
        let h = try Harness()
        h.agent.down = ["down.test"]
        h.agent.gone = ["gone.test"]
        try await h.submit(["x@down.test"], ret: "FULL", bodyLines: Self.lines)
        try await h.submit(["y@gone.test"], ret: "FULL", bodyLines: Self.lines)
        let size = try #require(h.rows("SELECT max(length(body)) FROM message").first?[0] as Int?)
        await h.scheduler.runDue()
        #expect(try h.state("x@down.test") == "deferred")
        #expect(try h.state("y@gone.test") == "bounced")
        let dsns = try h.dsns()
        #expect(dsns.count == 1)
        let report: Data = try #require(dsns.first?[2])
        #expect(report.count > size) // RET=FULL: the whole message is in it
        #expect(String(decoding: report.suffix(200), as: UTF8.self).contains("body line\r\nbody line\r\n"))
        #expect(h.scheduler.bodyMemory.inUse == 0)
    }

    /// Reading the next message ahead (to start it in the same write as
    /// this one's content) never waits: a connection that waited while
    /// holding a body could wait for itself. With room for one body, one
    /// connection sends its messages one after the other, none waiting.
    @Test func theNextMessageIsNotReadAheadWithoutRoom() async throws {
        let h = try Harness { $0.bodyMemory = 1_200_000; $0.maxConnectionsPerDestination = 1 }
        for i in 0..<3 { try await h.submit(["ok\(i)@one.test"], bodyLines: Self.lines) }
        await h.scheduler.runDue()
        #expect(try h.rows("SELECT count(*) FROM recipient WHERE state = 'delivered'").first?[0] as Int? == 3)
        #expect(h.agent.connections == 1)
        #expect(h.scheduler.bodyMemory.waits == 0)
        #expect(h.scheduler.bodyMemory.peak == h.agent.sent[0].body.count)
        #expect(h.scheduler.bodyMemory.inUse == 0)
    }
}
