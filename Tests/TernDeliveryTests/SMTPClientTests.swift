import Foundation
import NIOCore
import NIOEmbedded
import NIOPosix
import Testing
@testable import TernDelivery
import TernProtocol
import TernRouting
import TernTestSupport

let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)

func agent(port: Int, routes: [StaticRoute]? = nil, resolver: any DNSResolver = StaticResolver(), timeouts: Int64 = 5) -> SMTPDeliveryAgent {
    var config = ClientConfig(heloName: "tern.test")
    config.setAllTimeouts(timeouts)
    let router = Router(routes: routes ?? [StaticRoute(domain: "*", host: "127.0.0.1", port: port)], resolver: resolver,
                        remotePort: port, shuffle: { $0 })
    return try! SMTPDeliveryAgent(router: router, config: config, group: group)
}

func message(_ rcpts: [String], from: String = "a@x.test", body: String = "Subject: t\r\n\r\nhello\r\n.dot\r\n", smtputf8: Bool = false,
             id: Int64 = 1) -> OutboundMessage {
    let recipients = rcpts.enumerated().map { ClientRecipient(id: Int64($0.offset + 1), address: $0.element, notify: "SUCCESS,FAILURE", orcpt: "rfc822;\($0.element)") }
    return OutboundMessage(messageID: id, queueID: "Q\(id)",
                           envelope: ClientEnvelope(mailFrom: from, size: body.utf8.count, bodyType: "8BITMIME", smtputf8: smtputf8,
                                                    ret: "FULL", envID: "E1", recipients: recipients),
                           body: Data(body.utf8))
}

func connect(_ a: SMTPDeliveryAgent, _ domain: String = "y.test") async throws -> any DeliveryConnection {
    guard case .connected(let c) = await a.connect(domain: domain) else { throw ClientFault.closed }
    return c
}

func codes(_ r: [Int64: RecipientOutcome]) -> [String] {
    r.keys.sorted().map { k in
        switch r[k]! {
        case .delivered(let x): return "delivered \(x.code)"
        case .deferred(let x): return "deferred \(x.code) \(x.enhanced.map { "\($0)" } ?? "")"
        case .bounced(let x): return "bounced \(x.code) \(x.enhanced.map { "\($0)" } ?? "")"
        }
    }
}

@Suite(.serialized) struct SMTPClientTests {
    @Test func pipelinedMixedRecipientsWithDSNParameters() async throws {
        let sink = try await SinkServer.start(group: group)
        defer { Task { await sink.stop() } }
        let c = try await connect(agent(port: sink.port))
        #expect(c.context.mxAddress == "127.0.0.1" && c.context.remoteDSN)
        let r = await c.send(message(["ok@y.test", "temp@y.test", "perm@y.test", "ok2@y.test"]))
        #expect(codes(r) == ["delivered 250", "deferred 451 4.2.1", "bounced 550 5.1.1", "delivered 250"])
        let m = try #require(sink.messages.first)
        #expect(m.mailCommand == "MAIL FROM:<a@x.test> SIZE=27 BODY=8BITMIME RET=FULL ENVID=E1")
        #expect(m.rcptCommands == ["RCPT TO:<ok@y.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;ok@y.test",
                                   "RCPT TO:<ok2@y.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;ok2@y.test"])
        #expect(m.data == "Subject: t\r\n\r\nhello\r\n.dot\r\n")
        // The same connection carries a second message; the first one's
        // transaction ended with its final reply, so no RSET comes between.
        #expect(c.isReusable)
        #expect(codes(await c.send(message(["ok3@y.test"]))) == ["delivered 250"])
        #expect(!sink.commands.contains("RSET"))
        #expect(sink.messages.count == 2)
        #expect(sink.connections == 1)
        // A transaction left open (every recipient refused) is reset before the next.
        #expect(codes(await c.send(message(["perm@y.test"]))) == ["bounced 550 5.1.1"])
        #expect(codes(await c.send(message(["ok4@y.test"]))) == ["delivered 250"])
        #expect(sink.commands.filter { $0 == "RSET" }.count == 1)
        #expect(sink.messages.last?.rcptCommands.first?.hasPrefix("RCPT TO:<ok4@y.test>") == true)
        await c.close()
        #expect(sink.commands.last == "QUIT")
    }

    /// RFC 2920 §3.1: the next message's MAIL, RCPT and DATA go out in the
    /// same write as this one's content and final dot.
    @Test func theNextMessageStartsWithThisOnesFinalDot() async throws {
        let sink = try await SinkServer.start(group: group)
        defer { Task { await sink.stop() } }
        let c = try await connect(agent(port: sink.port))
        #expect(codes(await c.send(message(["ok1@y.test"], id: 1), next: message(["ok2@y.test", "perm2@y.test"], id: 2))) == ["delivered 250"])
        #expect(c.startedMessageID == 2 && sink.inputAfterDot == 1)
        #expect(codes(await c.send(message(["ok2@y.test", "perm2@y.test"], id: 2), next: message(["perm3@y.test"], id: 3)))
                == ["delivered 250", "bounced 550 5.1.1"])
        #expect(c.startedMessageID == 3 && sink.inputAfterDot == 2)
        // Every recipient of 3 was refused, so its DATA was too: no content,
        // nothing for 4 to ride on; 4 starts with RSET (3's MAIL was accepted).
        #expect(codes(await c.send(message(["perm3@y.test"], id: 3), next: message(["ok4@y.test"], id: 4))) == ["bounced 550 5.1.1"])
        #expect(c.startedMessageID == nil)
        #expect(codes(await c.send(message(["ok4@y.test"], id: 4), next: nil)) == ["delivered 250"])
        #expect(sink.messages.map { $0.rcptCommands.map { String($0.prefix(16)) } } == [["RCPT TO:<ok1@y.t"], ["RCPT TO:<ok2@y.t"], ["RCPT TO:<ok4@y.t"]])
        #expect(sink.messages.allSatisfy { $0.data == "Subject: t\r\n\r\nhello\r\n.dot\r\n" })
        #expect(sink.commands.filter { $0 == "RSET" }.count == 1 && sink.connections == 1)
        // Started but never sent: closing drops the connection instead of
        // sending QUIT as content, and nothing half-sent is delivered.
        #expect(codes(await c.send(message(["ok5@y.test"], id: 5), next: message(["ok6@y.test"], id: 6))) == ["delivered 250"])
        #expect(c.startedMessageID == 6)
        await c.close()
        #expect(sink.commands.last?.hasPrefix("DATA") == true && sink.messages.count == 4)

        // A caller that sends another message than the started one gets a
        // deferral and a dropped connection, not a message in the wrong place.
        let d = try await connect(agent(port: sink.port))
        _ = await d.send(message(["ok7@y.test"], id: 7), next: message(["ok8@y.test"], id: 8))
        #expect(codes(await d.send(message(["ok9@y.test"], id: 9))) == ["deferred 451 4.4.2"])
        #expect(!d.isReusable && sink.messages.count == 5)

        // The connection dies on the next message's MAIL, after this one's
        // 250: this one is delivered (not deferred, which would send it twice).
        let e = try await connect(agent(port: sink.port))
        #expect(codes(await e.send(message(["ok10@y.test"], id: 10), next: message(["ok11@y.test"], from: "dropmail@x.test", id: 11)))
                == ["delivered 250"])
        #expect(e.startedMessageID == nil && !e.isReusable && sink.messages.count == 6)
    }

    @Test func withoutPipeliningOrDSN() async throws {
        var config = SinkServer.Config()
        config.extensions = ["8BITMIME"]
        let sink = try await SinkServer.start(config, group: group)
        defer { Task { await sink.stop() } }
        let c = try await connect(agent(port: sink.port))
        #expect(!c.context.remoteDSN)
        #expect(codes(await c.send(message(["ok@y.test", "perm@y.test"]))) == ["delivered 250", "bounced 550 5.1.1"])
        #expect(sink.messages.first?.mailCommand == "MAIL FROM:<a@x.test> BODY=8BITMIME")
        #expect(sink.messages.first?.rcptCommands == ["RCPT TO:<ok@y.test>"])
        // All recipients refused: no DATA is sent.
        #expect(codes(await c.send(message(["perm@y.test"]))) == ["bounced 550 5.1.1"])
        #expect(Array(sink.commands.suffix(2)) == ["MAIL FROM:<a@x.test> BODY=8BITMIME", "RCPT TO:<perm@y.test>"])
        await c.close()
    }

    @Test func heloFallbackSendsNoParameters() async throws {
        var config = SinkServer.Config()
        config.acceptEHLO = false
        let sink = try await SinkServer.start(config, group: group)
        defer { Task { await sink.stop() } }
        let c = try await connect(agent(port: sink.port))
        #expect(codes(await c.send(message(["ok@y.test"]))) == ["delivered 250"])
        #expect(sink.commands.contains("HELO tern.test"))
        #expect(sink.messages.first?.mailCommand == "MAIL FROM:<a@x.test>")
        await c.close()
    }

    @Test func sizeAndSMTPUTF8AreCheckedBeforeSending() async throws {
        var config = SinkServer.Config()
        config.extensions = ["PIPELINING", "SIZE 10"]
        let sink = try await SinkServer.start(config, group: group)
        defer { Task { await sink.stop() } }
        let c = try await connect(agent(port: sink.port))
        #expect(codes(await c.send(message(["ok@y.test"]))) == ["bounced 552 5.3.4"])
        #expect(codes(await c.send(message(["jörg@y.test"], body: "x\r\n"))) == ["bounced 553 5.6.7"])
        #expect(!sink.commands.contains { $0.hasPrefix("MAIL") })
        await c.close()
    }

    @Test func failoverToTheNextHop() async throws {
        // The second MX listens on 127.0.0.2; the first greets with 421, then one refuses connections.
        let good = try await SinkServer.start(group: group, host: "127.0.0.2")
        defer { Task { await good.stop() } }
        var busyConfig = SinkServer.Config()
        busyConfig.greeting = "421 4.3.2 busy"
        let busy = try await SinkServer.start(busyConfig, group: group, host: "127.0.0.1")
        defer { Task { await busy.stop() } }
        let resolver = StaticResolver(
            mx: ["y.test": [MXRecord(preference: 10, host: "busy.y.test"), MXRecord(preference: 20, host: "good.y.test")],
                 "z.test": [MXRecord(preference: 10, host: "dead.z.test"), MXRecord(preference: 20, host: "good.y.test")]],
            hosts: ["busy.y.test": [IPAddress("127.0.0.1")!], "good.y.test": [IPAddress("127.0.0.2")!], "dead.z.test": [IPAddress("127.0.0.3")!]])
        // MX delivery uses one port for every host: give each sink the other's port via static routes instead.
        let viaMX = agent(port: good.port, routes: [], resolver: resolver)
        let c = try await connect(viaMX, "z.test") // 127.0.0.3:port refuses; 127.0.0.2 answers
        #expect(c.context.mxHost == "good.y.test")
        await c.close()
        let busyFirst = agent(port: busy.port, routes: [StaticRoute(domain: "y.test", host: "127.0.0.1", port: busy.port)])
        guard case .failed(let reply, let ctx) = await busyFirst.connect(domain: "y.test") else { Issue.record("421 greeting must fail"); return }
        #expect(reply.code == 451 && reply.text.contains("421"))
        #expect(ctx.mxAddress == "127.0.0.1")
    }

    @Test func routingFailuresComeBackAsReplies() async throws {
        let a = agent(port: 9, routes: [], resolver: StaticResolver(mx: ["null.test": [MXRecord(preference: 0, host: ".")]], nxdomains: ["gone.test"]))
        guard case .failed(let nx, _) = await a.connect(domain: "gone.test") else { Issue.record("NXDOMAIN"); return }
        #expect(nx.code == 550 && nx.enhanced == .badDestinationSystem)
        guard case .failed(let null, _) = await a.connect(domain: "null.test") else { Issue.record("null MX"); return }
        #expect(null.enhanced == .nullMX)
        // Nothing listens: a temporary failure naming the hop.
        let dead = agent(port: 1, routes: [StaticRoute(domain: "*", host: "127.0.0.1", port: 1)])
        guard case .failed(let refused, let ctx) = await dead.connect(domain: "y.test") else { Issue.record("refused"); return }
        #expect(refused.code == 451 && ctx.mxAddress == "127.0.0.1")
    }

    @Test func lostAndLateRepliesDefer() async throws {
        let sink = try await SinkServer.start(group: group)
        defer { Task { await sink.stop() } }
        let c = try await connect(agent(port: sink.port))
        let dropped = await c.send(message(["dropdata@y.test"]))
        #expect(codes(dropped) == ["deferred 451 4.4.2"])
        #expect(dropped[1]?.reply.text.contains("end of data") == true)
        #expect(!c.isReusable)
        let slow = try await connect(agent(port: sink.port, timeouts: 1))
        #expect(codes(await slow.send(message(["slowdata@y.test"]))) == ["deferred 451 4.4.2"])
        let after = try await connect(agent(port: sink.port))
        #expect(codes(await after.send(message(["tempdata@y.test", "ok@y.test"]))) == ["deferred 451 4.3.0", "deferred 451 4.3.0"])
        #expect(codes(await after.send(message(["rejectdata@y.test"]))) == ["bounced 554 5.6.0"])
        await after.close()
    }
}

/// The reply handler's one timer on the loop's clock: each reply's timeout
/// counts from the reply before it, and a missed one fails every waiter.
@Suite struct ReplyTimerTests {
    @Test func eachReplyGetsItsOwnTimeoutFromThePreviousOne() throws {
        let channel = EmbeddedChannel()
        let handler = SMTPReplyHandler()
        try channel.pipeline.syncOperations.addHandler(handler)
        let loop = channel.embeddedEventLoop
        let futures = (0..<3).map { _ in handler.expect(timeout: .seconds(1), loop: loop) }
        // Three replies 0.7 s apart: 2.1 s in all, none later than 1 s after the one before.
        for (i, code) in [250, 251, 354].enumerated() {
            loop.advanceTime(by: .milliseconds(700))
            try channel.writeInbound(ByteBuffer(string: "\(code) ok\r\n"))
            #expect(try futures[i].wait().code == code)
        }
        // The next one never comes: after its second, it and the one queued behind it fail.
        let late = handler.expect(timeout: .seconds(1), loop: loop)
        let behind = handler.expect(timeout: .seconds(5), loop: loop)
        loop.advanceTime(by: .milliseconds(999))
        try channel.writeInbound(ByteBuffer(string: "250 in time\r\n"))
        #expect(try late.wait().text == "in time")
        loop.advanceTime(by: .seconds(4))
        #expect(!isDone(behind))
        loop.advanceTime(by: .seconds(2))
        #expect(throws: ClientFault.self) { try behind.wait() }
        #expect(!channel.isActive) // closed on the timeout
    }

    func isDone(_ f: EventLoopFuture<SMTPReply>) -> Bool {
        var done = false
        f.whenComplete { _ in done = true }
        return done
    }
}

@Suite struct EventLoopExecutorTests {
    /// A task that prefers a loop's executor runs there, before and after
    /// each await, whoever resumes it.
    @Test func aTaskPreferringALoopRunsOnIt() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let executors = EventLoopExecutor.forEachLoop(of: group)
        #expect(executors.count == 2)
        #expect(executors[0].loop !== executors[1].loop)
        let loop = executors[1].loop
        let seen = await Task(executorPreference: executors[1]) { () async -> [Bool] in
            var seen = [loop.inEventLoop]
            try? await Task.sleep(nanoseconds: 1_000_000)             // resumed by the clock
            seen.append(loop.inEventLoop)
            _ = try? await group.next().submit { 1 }.get()            // resumed from a loop, maybe the other
            seen.append(loop.inEventLoop)
            _ = await withCheckedContinuation { cont in                // resumed from another thread
                Thread.detachNewThread { cont.resume(returning: 0) }
            }
            seen.append(loop.inEventLoop)
            return seen
        }.value
        #expect(seen == [true, true, true, true])
        try await group.shutdownGracefully()
    }
}

/// Issue 15: servers that lie, flood, answer out of order, or are us.
@Suite(.serialized) struct HostileServerTests {
    /// A server answering EHLO with endless "250-" lines is cut off at
    /// 100 lines instead of buffered until the reply timeout.
    @Test func endlessContinuationLinesAreCutOff() async throws {
        let peer = try await ScriptedPeer.start(group: group) { line, _ in
            line.hasPrefix("EHLO") ? Array(repeating: "250-" + String(repeating: "x", count: 200), count: 5000) + ["250 done"] : plainReply(line)
        }
        defer { Task { await peer.stop() } }
        guard case .failed(let reply, _) = await agent(port: peer.port, timeouts: 30).connect(domain: "y.test") else {
            Issue.record("connected to a flooding server"); return
        }
        #expect(reply.code == 451)
        #expect(reply.text.contains("longer than 100 lines"))
        #expect(reply.text.utf8.count < 1000)
    }

    /// smtp-sink -W .:1: the next message's MAIL, RCPT and DATA are
    /// answered before the final dot that went out with them. Before the
    /// check, the MAIL's "250 2.1.0" counted as this message delivered.
    @Test func repliesOutOfOrderDeferAndClose() async throws {
        for enhanced in [true, false] {
            let peer = try await ScriptedPeer.start(group: group) { line, state in
                var r = plainReply(line)
                if !enhanced && !line.hasPrefix("EHLO") { r = r.map { String($0.prefix(4)) + "Ok" } }
                if line == "." && state.lines.count == 5 { state.held = r; return [] } // the dot of message 1, with message 2 behind it
                if line.hasPrefix("DATA") && !state.held.isEmpty { defer { state.held = [] }; return r + state.held }
                return r
            }
            defer { Task { await peer.stop() } }
            let c = try await connect(agent(port: peer.port))
            let first = await c.send(message(["a@y.test"], id: 1), next: message(["b@y.test"], id: 2))
            #expect(codes(first) == ["deferred 451 4.5.0"], "enhanced \(enhanced)")
            #expect(!c.isReusable)
            #expect(c.startedMessageID == nil)
            // The started message is not sent on a dead connection: deferred too.
            let second = await c.send(message(["b@y.test"], id: 2))
            #expect(codes(second).allSatisfy { $0.hasPrefix("deferred") })
        }
    }

    /// Issue 18's defect: a provider answers MAIL with a multi-line 421 and
    /// closes while RCPT and DATA are pipelined behind it. The 421 and its
    /// text are what the recipients are deferred with, not "lost connection";
    /// an RCPT refused before a close keeps its own refusal.
    @Test func a421AndCloseBehindPipelinedCommandsIsRecordedWithItsText() async throws {
        let gmail = ["421-4.7.28 [192.0.2.1] Our system has detected an unusual rate of",
                     "421-4.7.28 unsolicited mail originating from your IP address. To protect our",
                     "421 4.7.28 users from spam, mail sent from your IP address has been temporarily rate limited."]
        let peer = try await ScriptedPeer.start(group: group) { line, state in
            guard line.hasPrefix("MAIL") else { return plainReply(line) }
            state.close = true
            return gmail
        }
        defer { Task { await peer.stop() } }
        let c = try await connect(agent(port: peer.port))
        let r = await c.send(message(["a@y.test", "b@y.test"]))
        #expect(codes(r) == ["deferred 421 4.7.28", "deferred 421 4.7.28"], "\(r)")
        #expect(r.values.allSatisfy { if case .deferred(let reply) = $0 { reply.text.contains("unusual rate") } else { false } })
        #expect(!c.isReusable)

        // RCPT refused for one recipient, then 421 and close at the next.
        let second = try await ScriptedPeer.start(group: group) { line, state in
            if line.hasPrefix("RCPT TO:<a@") { return ["550 5.1.1 no such user"] }
            if line.hasPrefix("RCPT TO:<b@") { state.close = true; return ["421 4.7.0 too many connections, slow down"] }
            return plainReply(line)
        }
        defer { Task { await second.stop() } }
        let c2 = try await connect(agent(port: second.port))
        let r2 = await c2.send(message(["a@y.test", "b@y.test", "c@y.test"]))
        #expect(codes(r2) == ["bounced 550 5.1.1", "deferred 421 4.7.0", "deferred 421 4.7.0"], "\(r2)")
    }

    /// A 354 where a RCPT reply belongs, and a 250 where DATA's 354 belongs:
    /// never a delivery.
    @Test func repliesThatDoNotFitTheirCommandsDefer() async throws {
        for (badVerb, badReply) in [("RCPT", "354 go on"), ("DATA", "250 2.0.0 fine")] {
            let peer = try await ScriptedPeer.start(group: group) { line, _ in
                line.hasPrefix(badVerb) ? [badReply] : plainReply(line)
            }
            defer { Task { await peer.stop() } }
            let c = try await connect(agent(port: peer.port))
            let r = await c.send(message(["a@y.test", "b@y.test"]))
            #expect(codes(r) == ["deferred 451 4.5.0", "deferred 451 4.5.0"], "\(badVerb)")
            #expect(!c.isReusable)
            #expect(!peer.lines.contains("."))
        }
    }

    /// A reply nobody asked for (two answers to EHLO) ends the session.
    @Test func anUnsolicitedReplyEndsTheSession() async throws {
        let peer = try await ScriptedPeer.start(group: group) { line, _ in
            line.hasPrefix("EHLO") ? plainReply(line) + ["250 2.0.0 and another thing"] : plainReply(line)
        }
        defer { Task { await peer.stop() } }
        let outcome = await agent(port: peer.port).connect(domain: "y.test")
        if case .connected(let c) = outcome {
            let r = await c.send(message(["a@y.test"]))
            #expect(codes(r).allSatisfy { $0.hasPrefix("deferred") })
        }
        #expect(!peer.lines.contains { $0.hasPrefix("MAIL") && peer.lines.contains(".") })
    }

    /// Postfix's "mail for D loops back to myself": a server greeting or
    /// answering EHLO with our name, or one of our own listening addresses.
    @Test func deliveryNeverLoopsBackToItself() async throws {
        let greets = try await ScriptedPeer.start(greeting: "220 tern.test ESMTP Tern", group: group) { line, _ in plainReply(line) }
        defer { Task { await greets.stop() } }
        guard case .failed(let r1, _) = await agent(port: greets.port).connect(domain: "y.test") else { Issue.record("greeting"); return }
        #expect(r1.code == 554 && r1.enhanced == .routingLoop && r1.text.contains("loops back to myself"))

        let answers = try await ScriptedPeer.start(group: group) { line, _ in plainReply(line, name: "TERN.test") }
        defer { Task { await answers.stop() } }
        guard case .failed(let r2, _) = await agent(port: answers.port).connect(domain: "y.test") else { Issue.record("EHLO"); return }
        #expect(r2.code == 554 && r2.enhanced == .routingLoop)

        let sink = try await ScriptedPeer.start(group: group) { line, _ in plainReply(line) }
        defer { Task { await sink.stop() } }
        let a = agent(port: sink.port)
        a.own.set([try SocketAddress(ipAddress: "0.0.0.0", port: sink.port)]) // a wildcard listener on that port
        guard case .failed(let r3, _) = await a.connect(domain: "y.test") else { Issue.record("own address"); return }
        #expect(r3.code == 554 && r3.enhanced == .routingLoop)
        #expect(sink.connections == 0)
        // Another port of the same address is someone else.
        a.own.set([try SocketAddress(ipAddress: "127.0.0.1", port: sink.port == 65535 ? 1 : sink.port + 1)])
        guard case .connected = await a.connect(domain: "y.test") else { Issue.record("other port"); return }
    }

    /// A queued message that made too many hops is bounced, not sent.
    @Test func tooManyHopsBounce() async throws {
        let peer = try await ScriptedPeer.start(group: group) { line, _ in plainReply(line) }
        defer { Task { await peer.stop() } }
        let c = try await connect(agent(port: peer.port))
        let hops = String(repeating: "Received: from a by b; Sun, 6 Dec 2026 00:00:00 +0000\r\n", count: 51)
        let r = await c.send(message(["a@y.test"], body: hops + "Subject: loop\r\n\r\nx\r\n"))
        #expect(codes(r) == ["bounced 554 5.4.6"])
        #expect(!peer.lines.contains { $0.hasPrefix("MAIL") })
        let ok = await c.send(message(["a@y.test"], body: String(hops.dropFirst(hops.count / 51 * 2)) + "Subject: fine\r\n\r\nx\r\n"))
        #expect(codes(ok) == ["delivered 250"])
    }
}
