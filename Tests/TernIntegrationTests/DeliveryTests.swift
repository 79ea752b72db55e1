// Delivery end to end: a client sends to the listener, the scheduler
// delivers through the real SMTP client to a receiving MTA — our scripted
// sink, and aiosmtpd, which nobody here wrote — and DSNs are checked with
// Python's email package.

import Foundation
import GRDB
import NIOPosix
import Testing
import TernRouting
import TernTestSupport
@testable import TernStore

let server0Group = MultiThreadedEventLoopGroup(numberOfThreads: 1)

extension TestServer {
    /// A client connected to this server, past the greeting and EHLO.
    func greetedClient() throws -> RawClient {
        let c = try RawClient(port: port)
        _ = try c.readReply()
        _ = try c.command("EHLO client.test")
        return c
    }
}

@Suite(.serialized) struct DeliveryTests {
    @Test func relayThroughTheSchedulerWithBounceAndDeferral() async throws {
        let sink = try await SinkServer.start(group: server0Group)
        defer { Task { await sink.stop() } }
        let server = try await TestServer.start(delivery: DeliverySetup(routes: [StaticRoute(domain: "*", host: "127.0.0.1", port: sink.port)]))
        defer { Task { await server.stop() } }
        let c = try server.greetedClient()
        let reply = try c.sendMessage(from: "alice@sender.test", to: ["ok@far.test", "perm@far.test", "temp@far.test"],
                                      body: "Subject: e2e\r\nMessage-ID: <e2e@sender.test>\r\n\r\nhello\r\n..dotted\r\n",
                                      mailParams: " RET=HDRS ENVID=E2E", rcptParams: " NOTIFY=FAILURE,DELAY")
        #expect(reply.status == "250 2.0.0")
        // The message reaches the sink, and so does the DSN for perm@ (routed back through the sink).
        #expect(await eventually { sink.messages.count == 2 })
        let original = try #require(sink.messages.first { $0.mailCommand.hasPrefix("MAIL FROM:<alice@sender.test>") })
        #expect(original.rcptCommands == ["RCPT TO:<ok@far.test> NOTIFY=FAILURE,DELAY"])
        #expect(original.data.hasPrefix("Received: from client.test ([127.0.0.1])\r\n\tby mx.test (Tern) with ESMTP id "))
        #expect(original.data.hasSuffix("Subject: e2e\r\nMessage-ID: <e2e@sender.test>\r\n\r\nhello\r\n.dotted\r\n"))
        #expect(await eventually { try server.count("SELECT count(*) FROM recipient WHERE state = 'delivered'") == 2 })
        #expect(try server.count("SELECT count(*) FROM recipient WHERE address = 'perm@far.test' AND state = 'bounced' AND last_enhanced = '5.1.1'") == 1)
        #expect(try server.count("SELECT count(*) FROM recipient WHERE address = 'temp@far.test' AND state = 'deferred' AND attempts = 1 AND next_attempt_at > \(nowMillis() + 200_000)") == 1)
        #expect(try server.count("SELECT count(*) FROM attempt WHERE mx_address = '127.0.0.1' AND mx_host = '127.0.0.1'") == 4)
        // The local address each connection left from (the kernel's choice: loopback).
        #expect(try server.count("SELECT count(*) FROM attempt WHERE source_address = '127.0.0.1'") == 4)
        // The DSN, parsed by Python's email package.
        let dsnMessage = try #require(sink.messages.first { $0.mailCommand.hasPrefix("MAIL FROM:<>") })
        #expect(dsnMessage.rcptCommands.first?.hasPrefix("RCPT TO:<alice@sender.test> NOTIFY=NEVER") == true)
        let dsn = try parseDSN(dsnMessage.data)
        #expect(dsn["content_type"] as? String == "multipart/report")
        #expect(dsn["report_type"] as? String == "delivery-status")
        #expect(dsn["parts"] as? [String] == ["text/plain", "message/delivery-status", "text/rfc822-headers"])
        #expect((dsn["defects"] as? [String])?.isEmpty == true)
        #expect(dsn["auto_submitted"] as? String == "auto-replied")
        let perMessage = dsn["per_message"] as? [String: String]
        #expect(perMessage?["Reporting-MTA"] == "dns; mx.test")
        #expect(perMessage?["Original-Envelope-Id"] == "E2E")
        #expect(perMessage?["Arrival-Date"] != nil)
        let recipients = dsn["per_recipient"] as? [[String: String]] ?? []
        #expect(recipients.count == 1)
        #expect(recipients.first?["Final-Recipient"] == "rfc822; perm@far.test")
        #expect(recipients.first?["Action"] == "failed")
        #expect(recipients.first?["Status"] == "5.1.1")
        #expect(recipients.first?["Remote-MTA"] == "dns; 127.0.0.1")
        #expect(recipients.first?["Diagnostic-Code"]?.hasPrefix("smtp; 550 5.1.1") == true)
        #expect(recipients.first?["Last-Attempt-Date"] != nil)
        #expect((dsn["returned_headers"] as? String)?.contains("Subject: e2e") == true)
        // The rollups the scheduler's outcomes wrote (from the facts its
        // transitions carry) are what a rebuild from the raw rows gives.
        let live = try rollupSnapshot(server.store)
        #expect(live.contains { $0.hasPrefix("recipient_daily") && $0.contains("\"far.test\"") && $0.contains("delivered:1") && $0.contains("bounced:1") })
        try await server.store.rebuildRollups()
        #expect(try rollupSnapshot(server.store) == live)
    }

    /// Mail that piles up while a connection is busy goes out pipelined
    /// across messages (RFC 2920 §3.1): each message's MAIL, RCPT and DATA
    /// with the previous one's final dot. Every message arrives once, whole.
    @Test func queuedMessagesGoOutPipelinedAcrossMessages() async throws {
        let sink = try await SinkServer.start(group: server0Group)
        defer { Task { await sink.stop() } }
        let server = try await TestServer.start(delivery: DeliverySetup(routes: [StaticRoute(domain: "*", host: "127.0.0.1", port: sink.port)]))
        defer { Task { await server.stop() } }
        let c = try server.greetedClient()
        // The sink holds its reply to the first message for half a second.
        #expect(try c.sendMessage(from: "a@sender.test", to: ["delaydata@far.test"], body: "Subject: 0\r\n\r\nzero\r\n").status == "250 2.0.0")
        for i in 1...5 {
            #expect(try c.sendMessage(from: "a@sender.test", to: ["r\(i)@far.test", "perm\(i)@far.test"],
                                      body: "Subject: \(i)\r\n\r\nbody \(i)\r\n..dot\r\n").status == "250 2.0.0")
        }
        #expect(await eventually { try server.count("SELECT count(*) FROM recipient WHERE state = 'delivered' AND domain = 'far.test'") == 6 })
        #expect(try server.count("SELECT count(*) FROM recipient WHERE state = 'bounced'") == 5)
        // The five DSNs for perm…@ go back through the sink as well.
        #expect(await eventually { try server.count("SELECT count(*) FROM recipient WHERE state = 'delivered' AND domain = 'sender.test'") == 5 })
        let received = sink.messages.filter { !$0.mailCommand.hasPrefix("MAIL FROM:<>") }
        #expect(received.count == 5) // the delayed one is counted, not recorded
        for i in 1...5 {
            let m = try #require(received.first { $0.rcptCommands == ["RCPT TO:<r\(i)@far.test>"] }, "message \(i)")
            #expect(m.data.hasSuffix("Subject: \(i)\r\n\r\nbody \(i)\r\n.dot\r\n")) // dot-stuffed on the way in and out
        }
        #expect(sink.inputAfterDot >= 1, "no message started with the previous one's final dot")
        #expect(sink.count == 6 + 5)
    }

    /// A slow remote (the `internet` benchmark's sinks): the greeting and
    /// every reply to a final dot come 300 ms late, and commands pipelined
    /// after a dot wait their turn. Every message arrives once, with its own
    /// recipients; destinations are served side by side, not one by one.
    @Test func aSlowRemoteGetsEveryMessageInOrder() async throws {
        var slow = SinkServer.Config()
        slow.greetingDelayMillis = 300
        slow.dotDelayMillis = 300
        let sink = try await SinkServer.start(slow, group: server0Group)
        defer { Task { await sink.stop() } }
        let server = try await TestServer.start(delivery: DeliverySetup(routes: [StaticRoute(domain: "*", host: "127.0.0.1", port: sink.port)]))
        defer { Task { await server.stop() } }
        let c = try server.greetedClient()
        for i in 0..<12 {
            #expect(try c.sendMessage(from: "a@sender.test", to: ["r\(i)@d\(i % 4).test"],
                                      body: "Subject: \(i)\r\n\r\nbody \(i)\r\n").status == "250 2.0.0")
        }
        #expect(await eventually { try server.count("SELECT count(*) FROM recipient WHERE state = 'delivered'") == 12 })
        #expect(try server.count("SELECT count(*) FROM recipient WHERE state <> 'delivered'") == 0)
        #expect(sink.count == 12)
        for i in 0..<12 {
            let m = sink.messages.filter { $0.rcptCommands == ["RCPT TO:<r\(i)@d\(i % 4).test>"] }
            #expect(m.count == 1 && m.first?.data.hasSuffix("Subject: \(i)\r\n\r\nbody \(i)\r\n") == true, "message \(i)")
        }
        // Four destinations, each its own connection at the same time.
        #expect(sink.providerStats.peakByPeer["127.0.0.1"] ?? 0 >= 2)
    }

    /// A large message (above Store.largeBody) goes into the database from
    /// the buffer it arrived in and out by BLOB I/O, dot-stuffed straight
    /// into the client's buffer a piece at a time: it arrives whole, byte for byte.
    @Test func aLargeMessageArrivesWhole() async throws {
        let sink = try await SinkServer.start(group: server0Group)
        defer { Task { await sink.stop() } }
        let server = try await TestServer.start(delivery: DeliverySetup(routes: [StaticRoute(domain: "*", host: "127.0.0.1", port: sink.port)]))
        defer { Task { await server.stop() } }
        let c = try server.greetedClient()
        let lines = (0..<16_000).map { i in i % 97 == 0 ? "..line \(i) starts with a dot" : "line \(i) " + String(repeating: "x", count: 70) }
        let body = "Subject: large\r\nMessage-ID: <large@sender.test>\r\n\r\n" + lines.joined(separator: "\r\n") + "\r\n"
        #expect(body.utf8.count > 1_200_000) // two pieces on the way out
        #expect(try c.sendMessage(from: "a@sender.test", to: ["big@far.test"], body: body).status == "250 2.0.0")
        #expect(await eventually { try server.count("SELECT count(*) FROM recipient WHERE state = 'delivered'") == 1 })
        let m = try #require(sink.messages.first)
        // What the client sent, un-stuffed by the sink, below our Received: field.
        let unstuffed = body.replacingOccurrences(of: "\r\n..", with: "\r\n.")
        #expect(m.data.hasPrefix("Received: "))
        #expect(m.data.hasSuffix(unstuffed))
        #expect(m.data.utf8.count - unstuffed.utf8.count < 400)
        #expect(try server.count("SELECT size FROM message WHERE header_message_id = 'large@sender.test'") == m.data.utf8.count)
    }

    /// A 421 greeting, a connection dropped after the final dot and a reply
    /// that never comes: each ends deferred, with its attempt and event.
    @Test func troubleAtTheRemoteEndDefers() async throws {
        let sink = try await SinkServer.start(group: server0Group)
        defer { Task { await sink.stop() } }
        var busyConfig = SinkServer.Config()
        busyConfig.greeting = "421 4.3.2 too busy"
        let busy = try await SinkServer.start(busyConfig, group: server0Group)
        defer { Task { await busy.stop() } }
        let routes = [StaticRoute(domain: "busy.test", host: "127.0.0.1", port: busy.port),
                      StaticRoute(domain: "*", host: "127.0.0.1", port: sink.port)]
        let server = try await TestServer.start(delivery: DeliverySetup(routes: routes, clientTimeout: 1))
        defer { Task { await server.stop() } }
        let c = try server.greetedClient()
        for rcpt in ["a@busy.test", "dropdata@far.test", "slowdata@slow.test"] {
            #expect(try c.sendMessage(from: "s@sender.test", to: [rcpt], body: "Subject: trouble\r\n\r\nx\r\n").status == "250 2.0.0")
        }
        #expect(await eventually { try server.count("SELECT count(*) FROM recipient WHERE state = 'deferred'") == 3 })
        func row(_ address: String) throws -> (String, Int, String) {
            let r = try server.store.read { db in
                try Row.fetchOne(db, sql: """
                    SELECT a.outcome, a.code, a.text FROM attempt a JOIN recipient r ON r.id = a.recipient_id WHERE r.address = ?
                    """, arguments: [address])
            }
            return (r?[0] ?? "", r?[1] ?? 0, r?[2] ?? "")
        }
        let greeting = try row("a@busy.test")
        #expect(greeting.0 == "deferred" && greeting.1 == 451 && greeting.2.contains("421 4.3.2 too busy"), "\(greeting)")
        let dropped = try row("dropdata@far.test")
        #expect(dropped.0 == "deferred" && dropped.1 == 451 && dropped.2.contains("during end of data"))
        let slow = try row("slowdata@slow.test")
        #expect(slow.0 == "deferred" && slow.1 == 451 && slow.2.contains("timeout"))
        #expect(try server.count("SELECT count(*) FROM event WHERE kind = 'deferred'") == 3)
        #expect(try server.count("SELECT count(*) FROM message WHERE origin = 'dsn'") == 0) // no DSN for a first deferral
    }

    /// The remote's 250 arrives while the scheduler is stopping: it is still recorded.
    @Test func aReplyDuringShutdownIsRecorded() async throws {
        let sink = try await SinkServer.start(group: server0Group)
        defer { Task { await sink.stop() } }
        let server = try await TestServer.start(delivery: DeliverySetup(routes: [StaticRoute(domain: "*", host: "127.0.0.1", port: sink.port)]))
        defer { Task { await server.stop() } }
        let c = try server.greetedClient()
        #expect(try c.sendMessage(from: "s@sender.test", to: ["delaydata@far.test"], body: "Subject: late\r\n\r\nx\r\n").status == "250 2.0.0")
        // Stop once the message is on the wire (before that, a stopping worker
        // rightly gives the recipient back untried).
        #expect(await eventually { sink.commands.contains("DATA") })
        server.scheduler!.stop()
        await server.schedulerTask!.value // returns once the delivery in progress is recorded
        #expect(try server.count("SELECT count(*) FROM recipient WHERE state = 'delivered'") == 1)
        #expect(try server.count("SELECT count(*) FROM attempt WHERE outcome = 'delivered' AND text = 'Ok: late'") == 1)
    }

    @Test func aiosmtpdAsTheReceivingMTA() async throws {
        let mta = try await Aiosmtpd.start()
        defer { mta.child.stop() }
        let server = try await TestServer.start(delivery: DeliverySetup(routes: [StaticRoute(domain: "*", host: "127.0.0.1", port: mta.port)]))
        defer { Task { await server.stop() } }
        let c = try server.greetedClient()
        // aiosmtpd offers no DSN, so NOTIFY=SUCCESS earns a "relayed" report from us (RFC 3461 §6.2.2).
        #expect(try c.sendMessage(from: "bob@sender.test", to: ["carol@far.test"], body: "Subject: to aiosmtpd\r\n\r\nhi\r\n",
                                  mailParams: " RET=FULL", rcptParams: " NOTIFY=SUCCESS ORCPT=rfc822;carol+40orig.test").status == "250 2.0.0")
        #expect(try c.sendMessage(from: "bob@sender.test", to: ["perm@far.test"], body: "Subject: refused\r\n\r\nx\r\n").status == "250 2.0.0")
        #expect(try c.sendMessage(from: "jörg@sender.test", to: ["zoë@far.test"], body: "Subject: utf8\r\n\r\nü\r\n", mailParams: " SMTPUTF8 BODY=8BITMIME").status == "250 2.0.0")
        #expect(await eventually { mta.messages().count == 4 }) // three originals minus one refused, plus two DSNs
        let messages = mta.messages()
        let toCarol = try #require(messages.first { ($0["rcpt_tos"] as? [String]) == ["carol@far.test"] })
        #expect(toCarol["mail_from"] as? String == "bob@sender.test")
        #expect((toCarol["content"] as? String)?.contains("by mx.test (Tern) with ESMTP") == true)
        let utf8 = try #require(messages.first { ($0["rcpt_tos"] as? [String]) == ["zoë@far.test"] })
        #expect((utf8["mail_options"] as? [String])?.contains("SMTPUTF8") == true)
        #expect((utf8["content"] as? String)?.hasSuffix("Subject: utf8\r\n\r\nü\r\n") == true)
        let reports = messages.filter { ($0["mail_from"] as? String) == "<>" } // aiosmtpd records the null sender as "<>"
        #expect(reports.count == 2)
        let parsed = try reports.map { try parseDSN($0["content"] as? String ?? "") }
        let relayed = try #require(parsed.first { (($0["per_recipient"] as? [[String: String]])?.first?["Action"]) == "relayed" })
        #expect((relayed["per_recipient"] as? [[String: String]])?.first?["Original-Recipient"] == "rfc822; carol@orig.test")
        #expect(relayed["parts"] as? [String] == ["text/plain", "message/delivery-status", "message/rfc822"])
        #expect(relayed["returned_subject"] as? String == "to aiosmtpd")
        let failed = try #require(parsed.first { (($0["per_recipient"] as? [[String: String]])?.first?["Action"]) == "failed" })
        #expect((failed["per_recipient"] as? [[String: String]])?.first?["Diagnostic-Code"]?.contains("550 5.1.1 No such user (aiosmtpd)") == true)
        #expect(try server.count("SELECT count(*) FROM recipient WHERE state = 'delivered'") == 4)
    }
}
