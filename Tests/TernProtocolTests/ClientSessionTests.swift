import Testing
@testable import TernProtocol

/// Parses reply text as a server sends it ("250-a", "250 b").
func reply(_ lines: String...) -> SMTPReply {
    var p = ReplyParser()
    for l in lines { if let r = try! p.feed(l) { return r } }
    fatalError("incomplete reply: \(lines)")
}

/// Issue 16 item 2: the client's dialog, reply by reply, without a socket.
@Suite struct ClientSessionTests {
    static let ehloPipelining = reply("250-mx.far.test hi", "250-PIPELINING", "250-SIZE 1000000", "250-8BITMIME", "250 DSN")
    static let ehloPlain = reply("250-mx.far.test hi", "250 SIZE 1000000")

    func session(tls: TLSPolicy = .none, tlsAvailable: Bool = false) -> ClientSession {
        ClientSession(.init(heloName: "tern.test", tlsPolicy: tls, tlsAvailable: tlsAvailable, maxHops: 5,
                            host: "mx.far.test", peer: "mx.far.test[192.0.2.1]:25"))
    }

    func message(_ id: Int64, _ rcpts: [String], hops: Int = 0, size: Int = 100) -> ClientMessage {
        ClientMessage(id: id, envelope: ClientEnvelope(
            mailFrom: "a@x.test", size: size, bodyType: nil, smtputf8: false, ret: nil, envID: nil,
            recipients: rcpts.enumerated().map { ClientRecipient(id: id * 100 + Int64($0.offset), address: $0.element, notify: nil, orcpt: nil) }),
            hops: hops)
    }

    /// Feeds the replies; the action the last one returns (earlier ones must return none).
    func feed(_ s: inout ClientSession, _ replies: [SMTPReply]) -> ClientAction? {
        for (i, r) in replies.enumerated() {
            let a = s.receive(r)
            if i < replies.count - 1 { #expect(a == nil, "reply \(i) ended the exchange early: \(String(describing: a))") } else { return a }
        }
        return nil
    }

    /// Opened on a server that offers PIPELINING.
    func open(_ ehlo: SMTPReply = ClientSessionTests.ehloPipelining) -> ClientSession {
        var s = session()
        #expect(s.start() == .exchange([], expecting: [.greeting]))
        #expect(s.receive(reply("220 mx.far.test ESMTP")) == .exchange(["EHLO tern.test"], expecting: [.ehlo]))
        #expect(s.receive(ehlo) == .ready)
        return s
    }

    // MARK: - Opening

    @Test func ehloRefusedFallsBackToHelo() {
        var s = session(tls: .may, tlsAvailable: true)
        _ = s.start()
        _ = s.receive(reply("220 old.test"))
        #expect(s.receive(reply("502 5.5.2 what?")) == .exchange(["HELO tern.test"], expecting: [.helo]))
        // HELO: no extensions, so no STARTTLS even under `may`.
        #expect(s.receive(reply("250 old.test")) == .ready)
        #expect(!s.capabilities.esmtp && !s.capabilities.pipelining)
        // Without PIPELINING: one command at a time.
        #expect(s.send(message(1, ["u@far.test"])) == .exchange(["MAIL FROM:<a@x.test>"], expecting: [.mail]))
    }

    @Test func heloRefusedTooFailsTheHopPolitely() {
        var s = session()
        _ = s.start()
        _ = s.receive(reply("220 old.test"))
        _ = s.receive(reply("500 no"))
        guard case .failed(.failure(let r), quit: true)? = s.receive(reply("550 go away")) else { Issue.record("not failed"); return }
        #expect(r.code == 451 && r.text.contains("refused EHLO and HELO"))
        // No mail on a refused session; a polite QUIT.
        guard case .done(let out) = s.send(message(1, ["u@far.test"])) else { Issue.record("sent"); return }
        #expect(out[100]?.reply.code == 451)
        #expect(s.close() == .quit)
    }

    @Test func a421GreetingFailsTheHop() {
        var s = session()
        _ = s.start()
        // The server is closing (RFC 5321 §3.8): no QUIT.
        guard case .failed(.failure(let r), quit: false)? = s.receive(reply("421 4.3.2 busy, come back later")) else { Issue.record("not failed"); return }
        #expect(r.code == 451 && r.enhanced == EnhancedStatus(4, 4, 1) && r.text.contains("greeted with: 421 4.3.2 busy"))
        #expect(s.broken && s.close() == .drop)
        // A 554 greeting: the client QUITs (RFC 5321 §3.1).
        var t = session()
        _ = t.start()
        guard case .failed(.failure, quit: true)? = t.receive(reply("554 5.7.1 not you")) else { Issue.record("not failed"); return }
        #expect(t.close() == .quit)
    }

    @Test func aGreetingOrEHLOWithOurOwnNameIsALoop() {
        var s = session()
        _ = s.start()
        guard case .failed(.loop(let r), quit: true)? = s.receive(reply("220 tern.test ESMTP")) else { Issue.record("no loop"); return }
        #expect(r.code == 554 && r.enhanced == .routingLoop && r.text.contains("greets as tern.test"))
        var t = session()
        _ = t.start()
        _ = t.receive(reply("220 mx.far.test"))
        guard case .failed(.loop(let e), _)? = t.receive(reply("250-TERN.TEST", "250 PIPELINING")) else { Issue.record("no loop"); return }
        #expect(e.text.contains("answers EHLO as"))
    }

    @Test func startTLSThenEHLOAgain() {
        var s = session(tls: .require, tlsAvailable: true)
        _ = s.start()
        _ = s.receive(reply("220 mx.far.test"))
        #expect(s.receive(reply("250-mx.far.test", "250-STARTTLS", "250 PIPELINING")) == .exchange(["STARTTLS"], expecting: [.startTLS]))
        #expect(s.receive(reply("220 2.0.0 go ahead")) == .startTLS)
        // What was learned before TLS is forgotten (RFC 3207 §4.2).
        #expect(s.tlsStarted() == .exchange(["EHLO tern.test"], expecting: [.ehlo]))
        #expect(s.capabilities.keywords.isEmpty)
        #expect(s.receive(reply("250-mx.far.test", "250 DSN")) == .ready)
        #expect(s.tlsActive && s.capabilities.dsn && !s.capabilities.pipelining)
    }

    @Test func startTLSPolicies() {
        // `may`: not offered, or refused → plaintext.
        var may = session(tls: .may, tlsAvailable: true)
        _ = may.start(); _ = may.receive(reply("220 m"))
        #expect(may.receive(reply("250-m", "250 STARTTLS")) == .exchange(["STARTTLS"], expecting: [.startTLS]))
        #expect(may.receive(reply("454 4.7.0 TLS not available")) == .ready)
        #expect(!may.tlsActive)
        // `require`: not offered → the hop fails, no QUIT.
        var req = session(tls: .require, tlsAvailable: true)
        _ = req.start(); _ = req.receive(reply("220 m"))
        guard case .failed(.failure(let r), quit: false)? = req.receive(reply("250 m")) else { Issue.record("not failed"); return }
        #expect(r.enhanced == EnhancedStatus(4, 7, 10) && r.text.contains("does not offer STARTTLS"))
        // A broken handshake (a fault while TLS starts) is a TLS failure, which `may` retries in plaintext.
        var hs = session(tls: .may, tlsAvailable: true)
        _ = hs.start(); _ = hs.receive(reply("220 m")); _ = hs.receive(reply("250-m", "250 STARTTLS")); _ = hs.receive(reply("220 go"))
        _ = hs.tlsStarted()
        guard case .failed(.tlsFailure(let t), _) = hs.fail(.protocolError("handshake failed")) else { Issue.record("not a TLS failure"); return }
        #expect(t.enhanced == EnhancedStatus(4, 7, 5) && t.text.contains("handshake failed"))
    }

    @Test func aFaultBeforeMailFailsTheHop() {
        var s = session()
        _ = s.start()
        _ = s.receive(reply("220 m"))
        guard case .failed(.failure(let r), quit: false) = s.fail(.timeout) else { Issue.record("not failed"); return }
        #expect(r.text.contains("failed before mail: timeout"))
    }

    // MARK: - Messages

    @Test func aPipelinedGroupDeliversEveryRecipient() {
        var s = open()
        #expect(s.send(message(1, ["u@far.test", "v@far.test"])) ==
                .exchange(["MAIL FROM:<a@x.test> SIZE=100", "RCPT TO:<u@far.test>", "RCPT TO:<v@far.test>", "DATA"],
                          expecting: [.mail, .rcpt, .rcpt, .data]))
        #expect(feed(&s, [reply("250 2.1.0 ok"), reply("250 2.1.5 ok"), reply("250 2.1.5 ok")]) == nil)
        #expect(s.receive(reply("354 go")) == .content(then: [], expecting: [.endOfData]))
        guard case .done(let out)? = s.receive(reply("250 2.0.0 queued as X")) else { Issue.record("no outcome"); return }
        #expect(out == [100: .delivered(reply("250 2.0.0 queued as X")), 101: .delivered(reply("250 2.0.0 queued as X"))])
        #expect(!s.broken)
        #expect(s.close() == .quit)
    }

    @Test func partialRecipientFailureAndA452Overshoot() {
        var s = open()
        _ = s.send(message(1, ["ok@far.test", "gone@far.test", "many@far.test"]))
        let action = feed(&s, [reply("250 ok"), reply("250 ok"), reply("550 5.1.1 no such user"),
                               reply("452 4.5.3 too many recipients"), reply("354 go")])
        #expect(action == .content(then: [], expecting: [.endOfData]))
        guard case .done(let out)? = s.receive(reply("250 queued")) else { Issue.record("no outcome"); return }
        #expect(out[100] == .delivered(reply("250 queued")))
        #expect(out[101] == .bounced(reply("550 5.1.1 no such user")))
        #expect(out[102] == .deferred(reply("452 4.5.3 too many recipients")))
    }

    @Test func dataRefusedAfterAcceptedRecipients() {
        var s = open()
        _ = s.send(message(1, ["u@far.test", "v@far.test"]))
        guard case .done(let out)? = feed(&s, [reply("250 ok"), reply("250 ok"), reply("550 5.1.1 no"), reply("554 5.3.4 no DATA today")]) else {
            Issue.record("no outcome"); return
        }
        #expect(out == [100: .bounced(reply("554 5.3.4 no DATA today")), 101: .bounced(reply("550 5.1.1 no"))])
        // MAIL was accepted and the transaction not ended: the next message starts with RSET.
        #expect(s.send(message(2, ["w@far.test"])) ==
                .exchange(["RSET", "MAIL FROM:<a@x.test> SIZE=100", "RCPT TO:<w@far.test>", "DATA"], expecting: [.rset, .mail, .rcpt, .data]))
    }

    @Test func everyRecipientRefusedButDATAAcceptedGetsALoneDot() {
        var s = open()
        _ = s.send(message(1, ["u@far.test"]))
        #expect(feed(&s, [reply("250 ok"), reply("550 5.1.1 no"), reply("354 go")]) == .endData)
        guard case .done(let out)? = s.receive(reply("554 5.5.1 no valid recipients")) else { Issue.record("no outcome"); return }
        #expect(out == [100: .bounced(reply("550 5.1.1 no"))])
    }

    @Test func aDropAfterMAILDefersTheMessage() {
        var s = open()
        _ = s.send(message(1, ["u@far.test", "v@far.test"]))
        #expect(s.receive(reply("250 ok")) == nil)
        guard case .done(let out) = s.fail(.closed) else { Issue.record("no outcome"); return }
        #expect(out.count == 2)
        #expect(out.values.allSatisfy { if case .deferred(let r) = $0 { r.text.contains("lost connection with mx.far.test during MAIL: connection closed") } else { false } })
        #expect(s.broken && s.close() == .drop)
    }

    @Test func aMAILRefusalAppliesToEveryRecipient() {
        var s = open()
        _ = s.send(message(1, ["u@far.test", "v@far.test"]))
        guard case .done(let out)? = feed(&s, [reply("451 4.7.1 greylisted"), reply("503 5.5.1 need MAIL"), reply("503 5.5.1 need MAIL"),
                                                reply("503 5.5.1 need MAIL")]) else { Issue.record("no outcome"); return }
        #expect(out == [100: .deferred(reply("451 4.7.1 greylisted")), 101: .deferred(reply("451 4.7.1 greylisted"))])
        // No transaction is open: no RSET.
        guard case .exchange(let lines, _) = s.send(message(2, ["w@far.test"])) else { Issue.record("nothing sent"); return }
        #expect(lines.first?.hasPrefix("MAIL") == true)
    }

    @Test func aLostFinalReplyIsAPossibleDuplicateDeferred() {
        var s = open()
        _ = s.send(message(1, ["u@far.test"]))
        _ = feed(&s, [reply("250 ok"), reply("250 ok"), reply("354 go")])
        guard case .done(let out) = s.fail(.timeout) else { Issue.record("no outcome"); return }
        guard case .deferred(let r)? = out[100] else { Issue.record("not deferred"); return }
        #expect(r.text.contains("during end of data: timeout"))
    }

    @Test func aReplyOutOfStepDefersEverythingAndDrops() {
        var s = open()
        _ = s.send(message(1, ["u@far.test", "v@far.test"]))
        _ = feed(&s, [reply("250 ok"), reply("250 ok"), reply("250 ok")])
        // 250 to DATA: a reply to something else (smtp-sink -W answers out of order).
        guard case .done(let out)? = s.receive(reply("250 2.0.0 queued")) else { Issue.record("no outcome"); return }
        #expect(out.count == 2)
        #expect(out.values.allSatisfy { if case .deferred(let r) = $0 { r.code == 451 && r.text.contains("out of step") } else { false } })
        #expect(s.broken && s.close() == .drop)
    }

    /// Content first: the next message's MAIL, RCPT and DATA go out with the
    /// final dot; its replies are in when it is sent, so no exchange is needed
    /// before its content. Three messages, RSET-free, one round trip each.
    @Test func contentFirstGroupsAcrossMessages() {
        var s = open()
        let m1 = message(1, ["u@far.test"]), m2 = message(2, ["v@far.test", "w@far.test"]), m3 = message(3, ["x@far.test"])
        _ = s.send(m1, next: m2)
        #expect(feed(&s, [reply("250 ok"), reply("250 ok"), reply("354 go")]) ==
                .content(then: ["MAIL FROM:<a@x.test> SIZE=100", "RCPT TO:<v@far.test>", "RCPT TO:<w@far.test>", "DATA"],
                         expecting: [.endOfData, .mail, .rcpt, .rcpt, .data]))
        guard case .done(let out1)? = feed(&s, [reply("250 queued 1"), reply("250 ok"), reply("250 ok"), reply("452 4.2.2 full"), reply("354 go")]) else {
            Issue.record("no outcome"); return
        }
        #expect(out1 == [100: .delivered(reply("250 queued 1"))])
        #expect(s.startedMessageID == 2)
        // The started message is sent next: straight to its content.
        #expect(s.send(m2, next: m3) == .content(then: ["MAIL FROM:<a@x.test> SIZE=100", "RCPT TO:<x@far.test>", "DATA"],
                                                 expecting: [.endOfData, .mail, .rcpt, .data]))
        guard case .done(let out2)? = feed(&s, [reply("250 queued 2"), reply("250 ok"), reply("250 ok"), reply("354 go")]) else {
            Issue.record("no outcome"); return
        }
        #expect(out2 == [200: .delivered(reply("250 queued 2")), 201: .deferred(reply("452 4.2.2 full"))])
        // A server waiting for content would read QUIT as content.
        #expect(s.startedMessageID == 3)
        var waiting = s
        #expect(waiting.close() == .drop)
        #expect(s.send(m3) == .content(then: [], expecting: [.endOfData]))
        guard case .done(let out3)? = s.receive(reply("250 queued 3")) else { Issue.record("no outcome"); return }
        #expect(out3 == [300: .delivered(reply("250 queued 3"))])
        #expect(s.close() == .quit)
    }

    /// The final dot's reply counts even when the next group's replies never come.
    @Test func aDropAfterTheFinalDotKeepsThatMessagesReply() {
        var s = open()
        _ = s.send(message(1, ["u@far.test"]), next: message(2, ["v@far.test"]))
        _ = feed(&s, [reply("250 ok"), reply("250 ok"), reply("354 go")])
        #expect(s.receive(reply("250 queued")) == nil)
        guard case .done(let out) = s.fail(.closed) else { Issue.record("no outcome"); return }
        #expect(out == [100: .delivered(reply("250 queued"))])
        #expect(s.startedMessageID == nil && s.broken)
    }

    @Test func anotherMessageThanTheStartedOneResetsTheConnection() {
        var s = open()
        _ = s.send(message(1, ["u@far.test"]), next: message(2, ["v@far.test"]))
        _ = feed(&s, [reply("250 ok"), reply("250 ok"), reply("354 go")])
        _ = feed(&s, [reply("250 q"), reply("250 ok"), reply("250 ok"), reply("354 go")])
        guard case .done(let out) = s.send(message(9, ["z@far.test"])) else { Issue.record("no outcome"); return }
        guard case .deferred(let r)? = out[900] else { Issue.record("not deferred"); return }
        #expect(r.text.contains("message 2 was started but not sent") && s.broken)
    }

    @Test func aRSETBetweenMessagesWithoutPipelining() {
        var s = open(ClientSessionTests.ehloPlain)
        #expect(s.send(message(1, ["u@far.test", "v@far.test"])) == .exchange(["MAIL FROM:<a@x.test> SIZE=100"], expecting: [.mail]))
        #expect(s.receive(reply("250 ok")) == .exchange(["RCPT TO:<u@far.test>"], expecting: [.rcpt]))
        #expect(s.receive(reply("550 no")) == .exchange(["RCPT TO:<v@far.test>"], expecting: [.rcpt]))
        // No recipient accepted: no DATA; the transaction stays open.
        guard case .done(let out)? = s.receive(reply("550 no")) else { Issue.record("no outcome"); return }
        #expect(out.count == 2)
        #expect(s.send(message(2, ["w@far.test"])) == .exchange(["RSET"], expecting: [.rset]))
        #expect(s.receive(reply("250 reset")) == .exchange(["MAIL FROM:<a@x.test> SIZE=100"], expecting: [.mail]))
        #expect(s.receive(reply("250 ok")) == .exchange(["RCPT TO:<w@far.test>"], expecting: [.rcpt]))
        #expect(s.receive(reply("250 ok")) == .exchange(["DATA"], expecting: [.data]))
        #expect(s.receive(reply("354 go")) == .content(then: [], expecting: [.endOfData]))
        guard case .done(let out2)? = s.receive(reply("250 queued")) else { Issue.record("no outcome"); return }
        #expect(out2 == [200: .delivered(reply("250 queued"))])
        #expect(s.close() == .quit)
        #expect(s.receive(reply("221 bye")) == .drop)
    }

    /// Found by fuzz-client: a MAIL accepted with another 2xx than 250 left
    /// the recipients without an outcome when the server had no PIPELINING.
    @Test func aMAILAcceptedWithAnother2xxStillSendsTheRecipients() {
        var s = open(ClientSessionTests.ehloPlain)
        _ = s.send(message(1, ["u@far.test"]))
        #expect(s.receive(reply("251 2.1.0 ok")) == .exchange(["RCPT TO:<u@far.test>"], expecting: [.rcpt]))
    }

    @Test func refusalsDecidedBeforeSending() {
        var s = open()
        guard case .done(let big) = s.send(message(1, ["u@far.test"], size: 2_000_000)) else { Issue.record("sent"); return }
        #expect(big[100]?.reply.code == 552)
        guard case .done(let loop) = s.send(message(2, ["u@far.test"], hops: 6)) else { Issue.record("sent"); return }
        #expect(loop[200]?.reply.code == 554 && loop[200]?.reply.enhanced == .routingLoop)
        #expect(!s.broken)
    }

    @Test func a421AnywhereMarksTheConnectionClosing() {
        var s = open()
        _ = s.send(message(1, ["u@far.test"]))
        guard case .done(let out)? = feed(&s, [reply("421 4.7.0 too fast"), reply("421 4.7.0 too fast"), reply("421 4.7.0 too fast")]) else {
            Issue.record("no outcome"); return
        }
        #expect(out[100] == .deferred(reply("421 4.7.0 too fast")))
        #expect(s.broken && s.close() == .drop)
    }
}

/// Issue 18's defect, reply by reply: replies that came before the
/// connection closed are answers, not "lost connection".
@Suite struct ClientSessionCloseTests {
    let t = ClientSessionTests()

    @Test func a421ToMAILThenACloseDefersWithThe421() {
        var s = t.open()
        _ = s.send(t.message(1, ["u@far.test", "v@far.test"]))
        let gmail = reply("421-4.7.28 unusual rate of", "421 4.7.28 unsolicited mail: temporarily rate limited")
        #expect(s.receive(gmail) == nil) // RCPT and DATA replies still awaited
        guard case .done(let out) = s.fail(.closed) else { Issue.record("no outcome"); return }
        #expect(out == [100: .deferred(gmail), 101: .deferred(gmail)])
        #expect(s.broken && s.close() == .drop)
    }

    @Test func aPermanentMAILRefusalBeforeACloseBounces() {
        var s = t.open()
        _ = s.send(t.message(1, ["u@far.test"]))
        #expect(s.receive(reply("550 5.7.1 sender blocked")) == nil)
        guard case .done(let out) = s.fail(.closed) else { Issue.record("no outcome"); return }
        #expect(out == [100: .bounced(reply("550 5.7.1 sender blocked"))])
    }

    @Test func rcptRepliesBeforeACloseKeepTheirOwnOutcome() {
        var s = t.open()
        _ = s.send(t.message(1, ["u@far.test", "v@far.test", "w@far.test"]))
        _ = s.receive(reply("250 2.1.0 ok"))
        _ = s.receive(reply("550 5.1.1 unknown"))
        _ = s.receive(reply("421 4.7.0 closing"))
        guard case .done(let out) = s.fail(.closed) else { Issue.record("no outcome"); return }
        #expect(out == [100: .bounced(reply("550 5.1.1 unknown")), 101: .deferred(reply("421 4.7.0 closing")),
                        102: .deferred(reply("421 4.7.0 closing"))])
    }

    /// Found by ShapingTests under CI load: the provider answers the MAIL
    /// that went out with the previous message's content "421 4.7.28" and
    /// closes. That MAIL's reply settles the started message (an attempt,
    /// and the shaper's signal) instead of the message going back to the
    /// queue as if never tried.
    @Test func a421ToTheStartedMessagesMAILThenACloseSettlesIt() {
        var s = t.open()
        let m2 = t.message(2, ["v@far.test", "w@far.test"])
        _ = s.send(t.message(1, ["u@far.test"]), next: m2)
        _ = t.feed(&s, [reply("250 ok"), reply("250 ok"), reply("354 go")])
        let gmail = reply("421-4.7.28 unusual rate of", "421 4.7.28 unsolicited mail: temporarily rate limited")
        #expect(s.receive(reply("250 queued 1")) == nil)
        #expect(s.receive(gmail) == nil)
        guard case .done(let out1) = s.fail(.closed) else { Issue.record("no outcome"); return }
        #expect(out1 == [100: .delivered(reply("250 queued 1"))])
        #expect(s.broken && s.startedMessageID == 2)
        guard case .done(let out2) = s.send(m2) else { Issue.record("no outcome"); return }
        #expect(out2 == [200: .deferred(gmail), 201: .deferred(gmail)])
        #expect(s.startedMessageID == nil)
        // Any other message on this connection is not sent.
        guard case .done(let out3) = s.send(t.message(3, ["x@far.test"])) else { Issue.record("no outcome"); return }
        #expect(out3[300]?.reply.code == 451)
    }

    /// The started message's MAIL accepted and one RCPT refused before the
    /// close: the refusal is that recipient's, the rest a lost connection.
    @Test func partOfTheStartedGroupBeforeACloseKeepsWhatCame() {
        var s = t.open()
        let m2 = t.message(2, ["v@far.test", "w@far.test"])
        _ = s.send(t.message(1, ["u@far.test"]), next: m2)
        _ = t.feed(&s, [reply("250 ok"), reply("250 ok"), reply("354 go")])
        _ = s.receive(reply("250 queued 1"))
        _ = s.receive(reply("250 2.1.0 ok"))
        _ = s.receive(reply("550 5.1.1 unknown"))
        guard case .done = s.fail(.closed) else { Issue.record("no outcome"); return }
        guard case .done(let out2) = s.send(m2) else { Issue.record("no outcome"); return }
        #expect(out2[200] == .bounced(reply("550 5.1.1 unknown")))
        guard case .deferred(let r)? = out2[201] else { Issue.record("not deferred"); return }
        #expect(r.code == 451 && r.text.contains("lost connection"))
    }

    @Test func withoutA421TheLossIsStillALostConnection() {
        var s = t.open()
        _ = s.send(t.message(1, ["u@far.test", "v@far.test"]))
        _ = s.receive(reply("250 2.1.0 ok"))
        _ = s.receive(reply("250 2.1.5 ok"))
        guard case .done(let out) = s.fail(.timeout) else { Issue.record("no outcome"); return }
        #expect(out.values.allSatisfy { if case .deferred(let r) = $0 { r.code == 451 && r.text.contains("lost connection") } else { false } })
    }
}
