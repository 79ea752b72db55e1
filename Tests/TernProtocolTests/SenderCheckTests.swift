// The sender check at MAIL (SPF refused at MAIL, opt-in): the session asks
// for it only for untrusted, unauthenticated clients, waits for its answer,
// and answers MAIL with the refusal or 250; pipelined commands behind MAIL
// see the transaction as the answer left it.

import Testing
@testable import TernProtocol

@Suite struct SenderCheckTests {
    @Test func mailWaitsForTheCheckAndTakesItsRefusal() {
        var d = Driver(config: Driver.config { $0.checkSender = true }, trusted: false, address: "192.0.2.1")
        d.senderRefusal = SMTPReply(550, .spfFailed, "SPF: evil.test does not designate 192.0.2.1 as a permitted sender")
        d.feed("EHLO c.test\r\nMAIL FROM:<x@evil.test>\r\nRCPT TO:<r@local.test>\r\nDATA\r\n")
        #expect(d.checkedSenders.count == 1)
        #expect(d.codes.dropFirst() == ["550 5.7.23", "503 5.5.1", "503 5.5.1"])
        #expect(d.session.state == .ready)

        // Accepted: the transaction goes on as usual.
        d.senderRefusal = nil
        d.feed("MAIL FROM:<a@example.test>\r\nRCPT TO:<r@local.test>\r\nDATA\r\nhi\r\n.\r\n")
        #expect(d.codes.suffix(4) == ["250 2.1.0", "250 2.1.5", "354", "250 2.0.0"])
        #expect(d.commits.count == 1 && d.commits[0].envelope.mailFrom?.address == "a@example.test")
    }

    /// The refusal counts as an error: the one too many also gets the 421 and the close (found by fuzz-session).
    @Test func aRefusalThatIsOneErrorTooManyCloses() {
        var d = Driver(config: Driver.config { $0.checkSender = true; $0.maxErrors = 1 }, trusted: false, address: "192.0.2.1")
        d.senderRefusal = SMTPReply(550, .spfFailed, "SPF fail")
        d.feed("EHLO c.test\r\nMAIL FROM:<x@evil.test>\r\nRCPT TO:<r@local.test>\r\n")
        #expect(d.codes.dropFirst() == ["550 5.7.23", "421 4.7.0"])
        #expect(d.closed && d.session.state == .closed)
    }

    @Test func trustedClientsAndTheDefaultAreNotChecked() {
        var trusted = Driver(config: Driver.config { $0.checkSender = true }, trusted: true)
        trusted.feed("EHLO c.test\r\nMAIL FROM:<x@evil.test>\r\n")
        #expect(trusted.checkedSenders.isEmpty && trusted.codes.last == "250 2.1.0")
        var off = Driver(trusted: false, address: "192.0.2.1")
        off.feed("EHLO c.test\r\nMAIL FROM:<x@evil.test>\r\n")
        #expect(off.checkedSenders.isEmpty && off.codes.last == "250 2.1.0")
    }

    @Test func anAnswerNobodyAskedForChangesNothing() {
        var s = SMTPServerSession(config: Driver.config(), client: ClientInfo(address: nil, addressText: "x", trusted: false))
        guard case .reply(let r, false) = s.senderChecked(SMTPReply(550, .spfFailed, "no")) else { Issue.record("action"); return }
        #expect(r.isEmpty && s.state == .greeting)
    }
}
