// The listener, intake and store together on a loopback port, driven with
// exact bytes.

import Foundation
import GRDB
import Testing
@testable import TernListener
import TernProtocol
@testable import TernStore

@Suite(.serialized) struct ListenerTests {
    @Test func pipelinedTransactionsAndCommitBefore250() async throws {
        let server = try await TestServer.start()
        defer { Task { await server.stop() } }
        let c = try RawClient(port: server.port)
        #expect(try c.readReply().lines.first == "mx.test ESMTP Tern")
        // One write: a whole RFC 2920 command group ending in DATA.
        try c.send("EHLO client.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test>\r\nRCPT TO:<c@far.test>\r\nDATA\r\n")
        let group = try c.readReplies(5)
        #expect(group.map(\.status) == ["250", "250 2.1.0", "250 2.1.5", "250 2.1.5", "354"])
        #expect(group[0].lines.contains("PIPELINING"))
        // The message, and the next transaction pipelined right after its dot.
        try c.send("Subject: one\r\n\r\n..dot\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<d@local.test>\r\nDATA\r\n")
        let accepted = try c.readReply()
        #expect(accepted.status == "250 2.0.0")
        let queueID = String(accepted.last.split(separator: " ").last!)
        // 250 means committed: another connection sees the rows right now.
        #expect(try server.count("SELECT count(*) FROM message WHERE queue_id = '\(queueID)'") == 1)
        #expect(try server.count("SELECT count(*) FROM recipient r JOIN message m ON m.id = r.message_id WHERE m.queue_id = '\(queueID)' AND r.state = 'queued'") == 2)
        #expect(try server.count("SELECT count(*) FROM event e JOIN message m ON m.id = e.message_id WHERE m.queue_id = '\(queueID)' AND e.kind = 'received'") == 1)
        #expect(try c.readReplies(3).map(\.status) == ["250 2.1.0", "250 2.1.5", "354"])
        try c.send("Subject: two\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        #expect(try c.readReplies(2).map(\.status) == ["250 2.0.0", "221 2.0.0"])
        #expect(c.isClosedByPeer())
        let body = try server.store.read { db in try Data.fetchOne(db, sql: "SELECT body FROM message WHERE queue_id = ?", arguments: [queueID]) }
        let text = String(decoding: body!, as: UTF8.self)
        #expect(text.hasPrefix("Received: from client.test ([127.0.0.1])\r\n\tby mx.test (Tern) with ESMTP id \(queueID);"))
        #expect(text.hasSuffix("Subject: one\r\n\r\n.dot\r\n"))
        #expect(try server.count("SELECT count(*) FROM message WHERE mail_from = ''") == 1)
    }

    @Test func bdatChunksInOneWrite() async throws {
        let server = try await TestServer.start()
        defer { Task { await server.stop() } }
        let c = try RawClient(port: server.port)
        _ = try c.readReply()
        try c.send("EHLO c.test\r\nMAIL FROM:<a@x.test> BODY=8BITMIME\r\nRCPT TO:<b@local.test>\r\nBDAT 12\r\nSubject: b\r\nBDAT 9 LAST\r\n\r\nbody\r\n.")
        let r = try c.readReplies(5)
        #expect(r.map(\.status) == ["250", "250 2.1.0", "250 2.1.5", "250 2.0.0", "250 2.0.0"])
        #expect(r[4].last.contains("queued as"))
        let body = try server.store.read { db in try Data.fetchOne(db, sql: "SELECT body FROM message") }
        #expect(String(decoding: body!, as: UTF8.self).hasSuffix("Subject: b\r\n\r\nbody\r\n."))
        #expect(try server.count("SELECT count(*) FROM message WHERE body_type = '8BITMIME'") == 1)
        // DATA after BDAT in one transaction is refused; BDAT without MAIL too.
        try c.send("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test>\r\nBDAT 1\r\nxDATA\r\nRSET\r\nBDAT 2 LAST\r\nzz")
        #expect(try c.readReplies(6).map(\.status) == ["250 2.1.0", "250 2.1.5", "250 2.0.0", "503 5.5.1", "250 2.0.0", "503 5.5.1"])
        #expect(try server.count("SELECT count(*) FROM message") == 1)
    }

    @Test func smugglingAttemptIsRefusedWhole() async throws {
        // Under `reject` the message with a bare LF is refused; under the
        // default `normalize` it is one message with the commands as text.
        for policy in BareNewlinePolicy.allCases {
            let server = try await TestServer.start { c, _ in c.session.bareNewline = policy }
            defer { Task { await server.stop() } }
            let c = try RawClient(port: server.port)
            _ = try c.readReply()
            try c.send("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test>\r\nDATA\r\n")
            _ = try c.readReplies(4)
            try c.send("Subject: x\r\n\r\nhi\n.\r\nMAIL FROM:<admin@local.test>\r\nRCPT TO:<victim@local.test>\r\nDATA\r\nforged\r\n.\r\nNOOP\r\n")
            #expect(try c.readReplies(2).map(\.status) == [policy == .reject ? "550 5.5.2" : "250 2.0.0", "250 2.0.0"])
            #expect(try server.count("SELECT count(*) FROM message") == (policy == .reject ? 0 : 1))
            #expect(try server.count("SELECT count(*) FROM message WHERE mail_from = 'admin@local.test'") == 0)
            #expect(try server.count("SELECT count(*) FROM recipient WHERE address = 'victim@local.test'") == 0)
        }
    }

    /// Issue 15's dialog, over a socket: an overlong line ending in a bare
    /// LF, then ".<CRLF>" and a smuggled transaction. Before the fix Tern
    /// answered 500, then 250 250 354 250, and queued the forged message.
    @Test func smugglingAfterAnOverlongLineStoresNothing() async throws {
        let server = try await TestServer.start()
        defer { Task { await server.stop() } }
        let c = try RawClient(port: server.port)
        _ = try c.readReply()
        try c.send("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test>\r\nDATA\r\n")
        _ = try c.readReplies(4)
        try c.send(String(repeating: "A", count: 1001) + "\n.\r\nMAIL FROM:<ceo@bank.test>\r\nRCPT TO:<u@local.test>\r\nDATA\r\n\r\nsmuggled\r\n.\r\nNOOP\r\n")
        #expect(try c.readReplies(2).map(\.status) == ["500 5.5.2", "250 2.0.0"])
        #expect(try server.count("SELECT count(*) FROM message") == 0)
    }

    @Test func aClientThatLeavesMidDataLeavesNothing() async throws {
        let server = try await TestServer.start()
        defer { Task { await server.stop() } }
        do {
            let c = try RawClient(port: server.port)
            _ = try c.readReply()
            try c.send("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test>\r\nDATA\r\n")
            _ = try c.readReplies(4)
            try c.send("Subject: half\r\n\r\nno end in sight\r\n")
        } // closed here
        await server.waitForNoConnections()
        #expect(server.listener.limiter.open == 0)
        #expect(try server.count("SELECT count(*) FROM message") == 0)
        #expect(try server.count("SELECT count(*) FROM recipient") == 0)
        #expect(try server.count("SELECT count(*) FROM event") == 0)
    }

    @Test func connectionLimits() async throws {
        let server = try await TestServer.start { c in
            c.maxConnectionsPerClient = 2
            c.trustedExemptFromClientLimit = false
        }
        defer { Task { await server.stop() } }
        let a = try RawClient(port: server.port), b = try RawClient(port: server.port)
        #expect(try a.readReply().code == 220)
        #expect(try b.readReply().code == 220)
        let third = try RawClient(port: server.port)
        #expect(try third.readReply().status == "421 4.7.0")
        #expect(third.isClosedByPeer())
        _ = try a.command("QUIT")
        await server.waitForCount(1)
        let fourth = try RawClient(port: server.port)
        #expect(try fourth.readReply().code == 220)

        let total = try await TestServer.start { c in c.maxConnections = 1 }
        defer { Task { await total.stop() } }
        let one = try RawClient(port: total.port)
        #expect(try one.readReply().code == 220)
        let two = try RawClient(port: total.port)
        #expect(try two.readReply().status == "421 4.7.0")
    }

    @Test func idleAndStalledClientsTimeOut() async throws {
        let server = try await TestServer.start { c in
            c.commandTimeoutSeconds = 1
            c.dataTimeoutSeconds = 1
        }
        defer { Task { await server.stop() } }
        let idle = try RawClient(port: server.port)
        _ = try idle.readReply()
        #expect(try idle.readReply().status == "421 4.4.2") // after ~1 s of silence
        #expect(idle.isClosedByPeer())
        let stalled = try RawClient(port: server.port)
        _ = try stalled.readReply()
        try stalled.send("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test>\r\nDATA\r\n")
        _ = try stalled.readReplies(4)
        try stalled.send("Subject: slow\r\n")
        #expect(try stalled.readReply().status == "421 4.4.2")
        #expect(try server.count("SELECT count(*) FROM message") == 0)
    }

    @Test func tooManyErrorsEndTheSession() async throws {
        let server = try await TestServer.start { c in c.session.maxErrors = 3 }
        defer { Task { await server.stop() } }
        let c = try RawClient(port: server.port)
        _ = try c.readReply()
        try c.send("XX\r\nYY\r\nZZ\r\nNOOP\r\n")
        #expect(try c.readReplies(4).map(\.status) == ["500 5.5.1", "500 5.5.1", "500 5.5.1", "421 4.7.0"])
        #expect(c.isClosedByPeer())
    }

    @Test func overlongLinesAndMessages() async throws {
        let server = try await TestServer.start { c in c.session.maxMessageSize = 2000 }
        defer { Task { await server.stop() } }
        let c = try RawClient(port: server.port)
        _ = try c.readReply()
        #expect(try c.command("NOOP " + String(repeating: "x", count: 3000)).status == "500 5.5.2")
        try c.send("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test>\r\nDATA\r\n")
        _ = try c.readReplies(4)
        try c.send(String(repeating: "y", count: 1200) + "\r\n.\r\n")
        #expect(try c.readReply().status == "500 5.5.2")
        try c.send("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test>\r\nDATA\r\n")
        _ = try c.readReplies(3)
        try c.send(String(repeating: String(repeating: "z", count: 100) + "\r\n", count: 30) + ".\r\n")
        #expect(try c.readReply().status == "552 5.3.4")
        #expect(try c.command("MAIL FROM:<a@x.test> SIZE=2001").status == "552 5.3.4")
        #expect(try server.count("SELECT count(*) FROM message") == 0)
        #expect(try c.command("NOOP").status == "250 2.0.0") // still serving
    }

    @Test func relayIsDeniedToUntrustedClients() async throws {
        let server = try await TestServer.start { c in c.session.relay = .init(relayDomains: ["local.test"], trustedNetworks: []) }
        defer { Task { await server.stop() } }
        let c = try RawClient(port: server.port)
        _ = try c.readReply()
        try c.send("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@far.test>\r\nRCPT TO:<b%far.test@local.test>\r\nRCPT TO:<@local.test:b@far.test>\r\nRCPT TO:<\"b@far.test\"@local.test>\r\nRCPT TO:<far.test!b@local.test>\r\nRCPT TO:<ok@local.test>\r\n")
        #expect(try c.readReplies(8).map(\.status) == ["250", "250 2.1.0", "554 5.7.1", "554 5.7.1", "554 5.7.1", "554 5.7.1", "554 5.7.1", "250 2.1.5"])
    }

    /// A full disk answers 452 4.3.1, leaves nothing, and the same session is
    /// served again once space returns.
    @Test func diskFullIsTemporaryAndRecoverable() async throws {
        let server = try await TestServer.start()
        defer { Task { await server.stop() } }
        let pages = try server.store.writeDirect { db in try Int.fetchOne(db, sql: "PRAGMA page_count") ?? 0 }
        _ = try server.store.writeDirect { db in try Int.fetchOne(db, sql: "PRAGMA max_page_count = \(pages + 3)") }
        let c = try RawClient(port: server.port)
        _ = try c.readReply()
        let big = String(repeating: String(repeating: "q", count: 78) + "\r\n", count: 2000)
        try c.send("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test>\r\nDATA\r\n")
        _ = try c.readReplies(4)
        try c.send(big + ".\r\n")
        #expect(try c.readReply().status == "452 4.3.1")
        #expect(try server.count("SELECT count(*) FROM message") == 0)
        #expect(try server.count("SELECT count(*) FROM recipient") == 0)
        _ = try server.store.writeDirect { db in try Int.fetchOne(db, sql: "PRAGMA max_page_count = 1073741823") }
        try c.send("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test>\r\nDATA\r\n")
        _ = try c.readReplies(3)
        try c.send(big + ".\r\n")
        #expect(try c.readReply().status == "250 2.0.0")
        #expect(try server.count("SELECT count(*) FROM message") == 1)
    }

    @Test func gracefulShutdownLetsOpenTransactionsFinish() async throws {
        let server = try await TestServer.start()
        let busy = try RawClient(port: server.port)
        let idle = try RawClient(port: server.port)
        _ = try busy.readReply()
        _ = try idle.readReply()
        try busy.send("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test>\r\n")
        _ = try busy.readReplies(3)
        _ = try idle.command("EHLO c.test")
        let stopping = Task { await server.stop() }
        // The idle session is told at once; the busy one finishes its message first.
        #expect(try await offPool { try idle.readReply() }.status == "421 4.3.2")
        #expect(idle.isClosedByPeer())
        // A client arriving during shutdown is told so, not refused at TCP level.
        let late = try RawClient(port: server.port)
        #expect(try await offPool { try late.readReply() }.status == "421 4.3.2")
        #expect(late.isClosedByPeer())
        #expect(try await offPool { try busy.command("DATA") }.code == 354)
        try busy.send("Subject: last\r\n\r\nx\r\n.\r\n")
        #expect(try await offPool { try busy.readReply() }.status == "250 2.0.0")
        #expect(try await offPool { try busy.readReply() }.status == "421 4.3.2")
        #expect(busy.isClosedByPeer())
        await stopping.value
        // The database was closed cleanly with the message in it.
        let check = try Store(path: server.dbPath)
        #expect(try check.stateCounts() == [.queued: 1])
        check.close()
    }
}

extension TestServer {
    func waitForCount(_ n: Int) async {
        for _ in 0..<250 where listener.limiter.open > n { try? await Task.sleep(for: .milliseconds(20)) }
    }
}
