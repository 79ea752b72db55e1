import Testing
@testable import TernProtocol

@Suite struct CommandParserTests {
    func parse(_ s: String, esmtp: Bool = true) -> Result<SMTPCommand, CommandError> {
        CommandParser.parse(Substring(s), esmtp: esmtp)
    }

    func code(_ s: String, esmtp: Bool = true) -> String? {
        if case .failure(let e) = parse(s, esmtp: esmtp) { return "\(e.reply.code) \(e.reply.enhanced!)" }
        return nil
    }

    @Test func simpleVerbsAnyCase() {
        #expect(parse("ehlo client.test") == .success(.ehlo("client.test")))
        #expect(parse("HELO client.test") == .success(.helo("client.test")))
        #expect(parse("DATA") == .success(.data))
        #expect(parse("rset") == .success(.rset))
        #expect(parse("NOOP") == .success(.noop))
        #expect(parse("NOOP anything") == .success(.noop))
        #expect(parse("QUIT") == .success(.quit))
        #expect(parse("VRFY bob") == .success(.vrfy("bob")))
        #expect(parse("HELP") == .success(.help(nil)))
        #expect(parse("HELP MAIL") == .success(.help("MAIL")))
        #expect(parse("STARTTLS") == .success(.starttls))
    }

    @Test func badSyntax() {
        #expect(code("EHLO") == "501 5.5.4")
        #expect(code("HELO ") == "501 5.5.4")
        #expect(code("DATA now") == "501 5.5.4")
        #expect(code("QUIT please") == "501 5.5.4")
        #expect(code("RSET x") == "501 5.5.4")
        #expect(code("VRFY") == "501 5.5.4")
        #expect(code("EXPN") == "501 5.5.4")
        #expect(code("FOO bar") == "500 5.5.1")
        #expect(code("MAIL") == "501 5.5.2")
        #expect(code("MAIL TO:<a@b.test>") == "501 5.5.2")
        #expect(code("MAIL FROM:a@b.test") == "501 5.5.2")
        #expect(code("RCPT FROM:<a@b.test>") == "501 5.5.2")
        #expect(code("MAIL FROM:<a@b.test>junk") == "501 5.5.2")
        #expect(code("MAIL FROM:<a@@b.test>") == "501 5.1.7")
        #expect(code("RCPT TO:<a@@b.test>") == "501 5.1.3")
        #expect(code("RCPT TO:<>") == "501 5.1.3")
    }

    @Test func mailPaths() {
        #expect(parse("MAIL FROM:<>") == .success(.mail(.null, MailParameters())))
        #expect(parse("mail from: <a@b.test>") == .success(.mail(.mailbox(Mailbox(localPart: "a", domain: "b.test")), MailParameters())))
        // A quoted local part may contain '>' and spaces.
        if case .success(.mail(.mailbox(let m), _)) = parse("MAIL FROM:<\"a> b\"@x.test> SIZE=10") {
            #expect(m.localPart == "\"a> b\"")
        } else { Issue.record("quoted local part with > should parse") }
    }

    @Test func mailParameters() throws {
        guard case .success(.mail(_, let p)) = parse("MAIL FROM:<a@b.test> SIZE=1000 BODY=8bitmime SMTPUTF8 RET=hdrs ENVID=QQ+2Bx") else {
            Issue.record("should parse"); return
        }
        #expect(p.size == 1000)
        #expect(p.body == .eightBitMIME)
        #expect(p.smtputf8)
        #expect(p.ret == .headers)
        #expect(p.envelopeID == "QQ+x")
        #expect(code("MAIL FROM:<a@b.test> SIZE=") == "501 5.5.4")
        #expect(code("MAIL FROM:<a@b.test> SIZE=12a") == "501 5.5.4")
        #expect(code("MAIL FROM:<a@b.test> SIZE=1 SIZE=2") == "501 5.5.4")
        #expect(code("MAIL FROM:<a@b.test> BODY=BINARYMIME") == "501 5.5.4")
        #expect(code("MAIL FROM:<a@b.test> SMTPUTF8=yes") == "501 5.5.4")
        #expect(code("MAIL FROM:<a@b.test> RET=ALL") == "501 5.5.4")
        #expect(code("MAIL FROM:<a@b.test> ENVID=a+zz") == "501 5.5.4")
        #expect(code("MAIL FROM:<a@b.test> ENVID=\(String(repeating: "x", count: 101))") == "501 5.5.4")
        #expect(code("MAIL FROM:<a@b.test> AUTH=<>") == nil) // RFC 4954 §5
        #expect(code("MAIL FROM:<a@b.test> AUTH=") == "501 5.5.4")
        #expect(code("MAIL FROM:<a@b.test> XFOO=1") == "555 5.5.4")
        #expect(code("MAIL FROM:<a@b.test> SIZE=10", esmtp: false) == "555 5.5.4")
        // UTF-8 sender only with SMTPUTF8.
        #expect(code("MAIL FROM:<jö@b.test>") == "553 5.6.7")
        if case .success(.mail(.mailbox(let m), _)) = parse("MAIL FROM:<jö@b.test> SMTPUTF8") {
            #expect(m.needsSMTPUTF8)
        } else { Issue.record("UTF-8 sender with SMTPUTF8 should parse") }
        // Huge SIZE saturates instead of failing.
        if case .success(.mail(_, let big)) = parse("MAIL FROM:<a@b.test> SIZE=99999999999999999999") {
            #expect(big.size == Int.max)
        } else { Issue.record("20-digit SIZE should parse") }
    }

    @Test func rcptParameters() {
        guard case .success(.rcpt(_, let p)) = parse("RCPT TO:<u@x.test> NOTIFY=success,FAILURE ORCPT=rfc822;u+40orig.test") else {
            Issue.record("should parse"); return
        }
        #expect(p.notify == Notify(success: true, failure: true))
        #expect(p.notify?.storedForm == "SUCCESS,FAILURE")
        #expect(p.orcpt == OriginalRecipient(addressType: "rfc822", address: "u@orig.test"))
        #expect(p.orcpt?.storedForm == "rfc822;u@orig.test")
        if case .success(.rcpt(_, let n)) = parse("RCPT TO:<u@x.test> NOTIFY=NEVER") {
            #expect(n.notify?.storedForm == "NEVER")
        } else { Issue.record("NOTIFY=NEVER") }
        #expect(code("RCPT TO:<u@x.test> NOTIFY=NEVER,SUCCESS") == "501 5.5.4")
        #expect(code("RCPT TO:<u@x.test> NOTIFY=SOMETIMES") == "501 5.5.4")
        #expect(code("RCPT TO:<u@x.test> NOTIFY=") == "501 5.5.4")
        #expect(code("RCPT TO:<u@x.test> NOTIFY=DELAY,DELAY") == "501 5.5.4")
        #expect(code("RCPT TO:<u@x.test> ORCPT=rfc822") == "501 5.5.4")
        #expect(code("RCPT TO:<u@x.test> ORCPT=;a@b") == "501 5.5.4")
        #expect(code("RCPT TO:<u@x.test> ORCPT=rfc822;a+4") == "501 5.5.4")
        #expect(code("RCPT TO:<u@x.test> FOO=BAR") == "555 5.5.4")
        #expect(code("RCPT TO:<u@x.test> NOTIFY=NEVER", esmtp: false) == "555 5.5.4")
        #expect(parse("RCPT TO:<Postmaster>") == .success(.rcpt(.postmaster, RecipientParameters())))
    }

    @Test func bdat() {
        #expect(parse("BDAT 100") == .success(.bdat(size: 100, last: false)))
        #expect(parse("bdat 0 last") == .success(.bdat(size: 0, last: true)))
        #expect(code("BDAT") == "501 5.5.4")
        #expect(code("BDAT x") == "501 5.5.4")
        #expect(code("BDAT -1") == "501 5.5.4")
        #expect(code("BDAT 10 FIRST") == "501 5.5.4")
        #expect(code("BDAT 10 LAST X") == "501 5.5.4")
        #expect(code("BDAT 9999999999999999999") == "501 5.5.4")
    }

    @Test func xtext() {
        #expect(XText.decode("abc+2B+3D") == "abc+=")
        #expect(XText.decode("a=b") == nil)
        #expect(XText.decode("a b") == nil)
        #expect(XText.decode("+2b") == nil) // hex must be upper case
        // Issue 15: decoded control characters are refused (header injection into DSNs).
        for bad in ["a+0D+0ABcc:+20x@y", "a+00b", "a+09b", "a+7Fb"] { #expect(XText.decode(bad) == nil, "\(bad)") }
        #expect(XText.decode("caf+C3+A9") == "café") // UTF-8 stays (RFC 6533)
        if case .success = CommandParser.parse("MAIL FROM:<a@x.test> ENVID=x+0D+0AInjected:+20y", esmtp: true) { Issue.record("ENVID with CRLF") }
        if case .success = CommandParser.parse("RCPT TO:<b@y.test> ORCPT=rfc822;b+0A@y.test", esmtp: true) { Issue.record("ORCPT with LF") }
        #expect(XText.encode("a+b=c d") == "a+2Bb+3Dc+20d")
        #expect(XText.decode(XText.encode("jöran+x")) == "jöran+x")
    }

    @Test func replyWireForm() throws {
        let r = SMTPReply(250, nil, lines: ["mx.test", "PIPELINING", "SIZE 10"])
        #expect(r.wireText == "250-mx.test\r\n250-PIPELINING\r\n250 SIZE 10\r\n")
        #expect(SMTPReply(550, .badDestinationMailbox, "no").wireText == "550 5.1.1 no\r\n")
        #expect(SMTPReply(250, .destinationOK, lines: ["a", "b"]).wireText == "250-2.1.5 a\r\n250 2.1.5 b\r\n")
        #expect(SMTPReply(554, .encryptionRequired, "é").wireText == "554 5.7.11 é\r\n")
        #expect(SMTPReply(421, EnhancedStatus(4, 100, 0), "x").wireText == "421 4.100.0 x\r\n")
        #expect(SMTPReply(7, nil, "").wireText == "7 \r\n")
        #expect(EnhancedStatus(parsing: "4.5.3") == .tooManyRecipients)
        #expect(EnhancedStatus(parsing: "3.1.1") == nil)
        #expect(EnhancedStatus(parsing: "4.5") == nil)
        #expect(EnhancedStatus(parsing: "4.5.3 ") == nil)
        #expect(EnhancedStatus(parsing: "4.-5.3") == nil)
        #expect(EnhancedStatus(parsing: "5.1.1000") == nil)
        let text = "5.1.1 no such user"
        let (code, rest) = try #require(EnhancedStatus.prefix(of: text))
        #expect(code == .badDestinationMailbox && text[rest...] == "no such user")
    }
}
