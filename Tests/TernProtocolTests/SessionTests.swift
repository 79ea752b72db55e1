import NIOCore
import Testing
@testable import TernProtocol

@Suite struct SessionTests {
    func untrusted() -> Driver { Driver(trusted: false, address: "192.0.2.9") }

    @Test func greetingAndEhlo() {
        var d = Driver()
        #expect(d.session.greeting().wireText == "220 mx.test ESMTP Tern\r\n")
        d.feed("EHLO client.test\r\n")
        let ehlo = d.replies.last!
        #expect(ehlo.code == 250 && ehlo.enhanced == nil)
        for ext in ["PIPELINING", "SIZE 26214400", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "CHUNKING", "DSN"] {
            #expect(ehlo.lines.contains(ext), "\(ext)")
        }
        d.feed("HELP\r\nVRFY bob\r\nNOOP\r\nEXPN list\r\nSTARTTLS\r\nQUIT\r\n")
        #expect(d.codes.suffix(6) == ["214 2.0.0", "252 2.5.0", "250 2.0.0", "502 5.5.1", "502 5.5.1", "221 2.0.0"])
        #expect(d.closed)
    }

    @Test func commandOrder() {
        var d = Driver()
        d.feed("MAIL FROM:<a@x.test>\r\n")
        #expect(d.last == "503 5.5.1")
        d.feed("RCPT TO:<b@local.test>\r\nDATA\r\n")
        #expect(d.codes == ["503 5.5.1", "503 5.5.1", "503 5.5.1"])
        d.feed("HELO c.test\r\nRCPT TO:<b@local.test>\r\nMAIL FROM:<a@x.test>\r\nMAIL FROM:<a@x.test>\r\n")
        #expect(d.codes.suffix(4) == ["250", "503 5.5.1", "250 2.1.0", "503 5.5.1"])
        d.feed("DATA\r\n") // MAIL but no recipient
        #expect(d.last == "554 5.5.1")
        d.feed("RSET\r\nRCPT TO:<b@local.test>\r\n")
        #expect(d.codes.suffix(2) == ["250 2.0.0", "503 5.5.1"])
        // EHLO in the middle of a transaction resets it (RFC 5321 §4.1.4).
        d.feed("MAIL FROM:<a@x.test>\r\nEHLO c.test\r\nRCPT TO:<b@local.test>\r\n")
        #expect(d.last == "503 5.5.1")
    }

    @Test func heloForbidsParametersAndBDAT() {
        var d = Driver()
        d.feed("HELO c.test\r\nMAIL FROM:<a@x.test> SIZE=10\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test>\r\nBDAT 3 LAST\r\nabc")
        #expect(d.codes.suffix(4) == ["555 5.5.4", "250 2.1.0", "250 2.1.5", "503 5.5.1"])
        #expect(d.commits.isEmpty)
    }

    @Test func relayRules() {
        var d = untrusted()
        d.feed("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\n")
        let cases: [(String, String)] = [
            ("<b@local.test>", "250 2.1.5"),
            ("<b@LOCAL.TEST>", "250 2.1.5"),
            ("<b@far.test>", "554 5.7.1"),
            ("<user%far.test@local.test>", "554 5.7.1"),      // percent hack
            ("<far.test!user@local.test>", "554 5.7.1"),      // bang path
            ("<@local.test:u@far.test>", "554 5.7.1"),        // source route: the mailbox decides
            ("<@far.test:u2@local.test>", "250 2.1.5"),       // route ignored, local mailbox
            ("<\"u@far.test\"@local.test>", "554 5.7.1"),     // quoted @
            ("<u@far.test@local.test>", "501 5.1.3"),         // not an address at all
            ("<u@[192.0.2.1]>", "554 5.7.1"),                  // address literal
            ("<Postmaster>", "250 2.1.5"),                     // always accepted
        ]
        for (rcpt, expected) in cases {
            d.feed("RCPT TO:\(rcpt)\r\n")
            #expect(d.last == expected, "\(rcpt)")
        }
        d.feed("DATA\r\nhi\r\n.\r\n")
        let stored = d.commits.first?.envelope.recipients.map(\.mailbox.address)
        #expect(stored == ["b@local.test", "u2@local.test", "postmaster@mx.test"]) // b@LOCAL.TEST is the same mailbox
    }

    /// Issue 15, backscatter: unknown recipients of a relay domain with a
    /// recipient table are refused at RCPT (550 5.1.1), not bounced later.
    @Test func relayRecipientTable() {
        let table = RecipientTable()
        table.replace(addresses: ["alice@local.test", "jörg@xn--bcher-kva.test"], catchAll: ["open.test": true, "closed.test": false])
        let config = Driver.config {
            $0.recipients = table
            $0.relay = RelayPolicy(relayDomains: ["local.test", "other.test", "open.test", "closed.test", "bücher.test"])
        }
        for trusted in [false, true] {
            var d = Driver(config: config, trusted: trusted, address: trusted ? "127.0.0.1" : "192.0.2.9")
            d.feed("EHLO c.test\r\nMAIL FROM:<a@x.test> SMTPUTF8\r\n")
            let cases: [(String, String)] = [
                ("<alice@local.test>", "250 2.1.5"),
                ("<ALICE@Local.Test>", "250 2.1.5"),     // case-insensitive
                ("<bob@local.test>", "550 5.1.1"),       // not listed
                ("<anyone@other.test>", "250 2.1.5"),    // no table for this domain
                ("<anyone@open.test>", "250 2.1.5"),     // catch-all on
                ("<anyone@closed.test>", "550 5.1.1"),   // catch-all off, nobody listed
                ("<jörg@Bücher.test>", "250 2.1.5"),     // U-label and A-label are one domain
                ("<karl@bücher.test>", "550 5.1.1"),
            ]
            for (rcpt, expected) in cases {
                d.feed("RCPT TO:\(rcpt)\r\n")
                #expect(d.last == expected, "\(rcpt) trusted \(trusted)")
            }
        }
    }

    @Test func trustedClientsRelayAnywhere() {
        var d = Driver(trusted: true)
        d.feed("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@far.test>\r\nRCPT TO:<user%far.test@local.test>\r\n")
        #expect(d.codes.suffix(2) == ["250 2.1.5", "250 2.1.5"])
    }

    @Test func sizeLimits() {
        var d = Driver(config: Driver.config { $0.maxMessageSize = 20 })
        d.feed("EHLO c.test\r\n")
        #expect(d.replies.last!.lines.contains("SIZE 20"))
        d.feed("MAIL FROM:<a@x.test> SIZE=21\r\n")
        #expect(d.last == "552 5.3.4")
        d.feed("MAIL FROM:<a@x.test> SIZE=20\r\nRCPT TO:<b@local.test>\r\nDATA\r\n")
        d.feed("0123456789\r\n0123456789\r\n.\r\n")
        #expect(d.last == "552 5.3.4")
        #expect(d.commits.isEmpty)
        // The transaction is over; the session goes on.
        d.feed("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test>\r\nDATA\r\nsmall\r\n.\r\n")
        #expect(d.last == "250 2.0.0")
        #expect(d.commits.count == 1)
    }

    @Test func recipientLimitAndDuplicates() {
        var d = Driver(config: Driver.config { $0.maxRecipients = 2 })
        d.feed("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<a@local.test>\r\nRCPT TO:<a@Local.Test>\r\nRCPT TO:<b@local.test>\r\nRCPT TO:<c@local.test>\r\n")
        #expect(d.codes.suffix(4) == ["250 2.1.5", "250 2.1.5", "250 2.1.5", "452 4.5.3"])
        d.feed("DATA\r\nx\r\n.\r\n")
        #expect(d.commits.first?.envelope.recipients.count == 2)
        // 452s for excess recipients are not errors until the overshoot limit.
        var o = Driver(config: Driver.config { $0.maxRecipients = 1; $0.maxErrors = 3; $0.recipientOvershootLimit = 5 })
        o.feed("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\n")
        for i in 0..<7 { o.feed("RCPT TO:<r\(i)@local.test>\r\n") }
        #expect(o.codes.suffix(7) == ["250 2.1.5", "452 4.5.3", "452 4.5.3", "452 4.5.3", "452 4.5.3", "452 4.5.3", "452 4.5.3"])
        #expect(!o.closed)
        o.feed("RCPT TO:<r9@local.test>\r\nRCPT TO:<r10@local.test>\r\n")
        #expect(o.last == "421 4.7.0")
    }

    @Test func textLineLimit() {
        var d = Driver()
        d.feed("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test>\r\nDATA\r\n")
        d.feed(String(repeating: "x", count: 998) + "\r\n") // exactly 1000 with CRLF: fine
        d.feed(String(repeating: "y", count: 999) + "\r\n.\r\n")
        #expect(d.last == "500 5.5.2")
        #expect(d.commits.isEmpty)
    }

    @Test func commandLineLimit() {
        var d = Driver()
        d.feed("NOOP " + String(repeating: "x", count: 505) + "\r\n") // 512 with CRLF
        #expect(d.last == "250 2.0.0")
        d.feed("NOOP " + String(repeating: "x", count: 506) + "\r\n")
        #expect(d.last == "500 5.5.2")
        d.feed("NOOP " + String(repeating: "x", count: 5000) + "\r\nNOOP\r\n")
        #expect(d.codes.suffix(2) == ["500 5.5.2", "250 2.0.0"])
        // RCPT may be longer by ORCPT's allowance (RFC 3461).
        d.feed("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test> ORCPT=rfc822;" + String(repeating: "o", count: 480) + "\r\n")
        #expect(d.last == "250 2.1.5")
    }

    @Test func dataTransparencyAndSmuggling() {
        for policy in BareNewlinePolicy.allCases {
            var d = Driver(config: Driver.config { $0.bareNewline = policy })
            d.feed("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test>\r\nDATA\r\n")
            #expect(d.last == "354")
            // <LF>.<CRLF> must not end the message: the "smuggled" MAIL is text.
            d.feed("Subject: s\r\n\r\nhello\n.\r\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@local.test>\r\nDATA\r\nevil\r\n.\r\n")
            #expect(d.codes.count == 5) // no reply was produced for the smuggled commands
            switch policy {
            case .reject:
                #expect(d.commits.isEmpty)
                #expect(d.last == "550 5.5.2")
            case .normalize:
                // One message, the would-be commands inside it as text; relayed
                // dot-stuffed, the lone "." cannot end anything downstream.
                #expect(d.commits.count == 1)
                #expect(d.commits.first?.envelope.mailFrom?.address == "a@x.test")
                #expect(d.commits.first?.body == "Subject: s\r\n\r\nhello\r\n\r\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@local.test>\r\nDATA\r\nevil\r\n")
            }
            let before = d.commits.count
            // <CR><LF>.<LF> neither; a bare CR is refused under either policy.
            d.feed("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test>\r\nDATA\r\nhello\r\n.\nstill data\r\n.\r\n")
            #expect(d.last == (policy == .reject ? "550 5.5.2" : "250 2.0.0"))
            d.feed("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test>\r\nDATA\r\nhel\rlo\r\n.\r\n")
            #expect(d.last == "550 5.5.2")
            #expect(d.replies.last?.text.contains("bare <CR>") == true)
            #expect(d.commits.count == before + (policy == .reject ? 0 : 1))
            // A proper message, with a dot-stuffed line and an empty body line.
            d.feed("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test>\r\nDATA\r\n..\r\n\r\n...x\r\n.\r\n")
            #expect(d.last == "250 2.0.0")
            #expect(d.commits.last?.body == ".\r\n\r\n..x\r\n")
        }
    }

    /// Issue 15's smuggling dialog: an overlong line that ends in a bare LF,
    /// then ".<CRLF>" and a whole second transaction. The "." must not end
    /// DATA, so the smuggled MAIL FROM never becomes a transaction, and the
    /// message is refused whole for its long line.
    @Test func smugglingAfterAnOverlongLineIsRefusedWhole() {
        for policy in BareNewlinePolicy.allCases {
            var d = Driver(config: Driver.config { $0.bareNewline = policy })
            d.feed("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test>\r\nDATA\r\n")
            d.feed(String(repeating: "A", count: 1001) + "\n.\r\nMAIL FROM:<ceo@bank.test>\r\nRCPT TO:<u@local.test>\r\nDATA\r\n\r\nsmuggled\r\n.\r\n")
            #expect(d.commits.isEmpty)
            #expect(d.codes.suffix(2) == ["354", "500 5.5.2"])
            #expect(d.codes.count == 5)
            // The session is usable again, and the long line with CRLF still ends normally.
            d.feed("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test>\r\nDATA\r\n" + String(repeating: "A", count: 1001) + "\r\n.\r\n")
            #expect(d.last == "500 5.5.2")
            #expect(d.commits.isEmpty)
        }
    }

    /// `smtplib.sendmail(from, to, msg.as_bytes())` sends LF line ends:
    /// normalised by default (as Postfix ≥ 3.9), refused when configured.
    @Test func bareLineFeedsAreNormalisedByDefault() {
        var d = Driver()
        d.feed("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test>\r\nDATA\r\nSubject: py\n\n..dot\nbody\r\n.\r\n")
        #expect(d.last == "250 2.0.0")
        #expect(d.commits.first?.body == "Subject: py\r\n\r\n.dot\r\nbody\r\n")
        var r = Driver(config: Driver.config { $0.bareNewline = .reject })
        r.feed("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test>\r\nDATA\r\nSubject: py\n\nbody\r\n.\r\n")
        #expect(r.last == "550 5.5.2")
        #expect(r.commits.isEmpty)
    }

    /// RFC 6152 §3: NUL is not 8-bit data; refused in lines, runs and chunks.
    @Test func nulBytesAreRefused() {
        var d = Driver()
        d.feed("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test>\r\nDATA\r\n")
        d.feed(bytes: Array("plain\r\nnul".utf8) + [0] + Array("here\r\nmore\r\n.\r\n".utf8))
        #expect(d.last == "550 5.6.0")
        d.feed("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test>\r\nDATA\r\n")
        d.feed(bytes: Array(".x".utf8) + [0] + Array("\r\n.\r\n".utf8)) // a dotted line, alone
        #expect(d.last == "550 5.6.0")
        d.feed(bytes: Array("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test>\r\nBDAT 3 LAST\r\na".utf8) + [0, 10])
        #expect(d.last == "550 5.6.0")
        #expect(d.commits.isEmpty)
        #expect(d.replies.last?.text.contains("NUL") == true)
    }

    /// BDAT text gets DATA's rules: bare CR refused, bare LF normalised or
    /// refused, a CRLF split between chunks is fine.
    @Test func bdatFollowsTheLineRules() {
        var d = Driver()
        d.feed("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test>\r\nBDAT 4\r\na\nb\rBDAT 3 LAST\r\n\nc\n")
        #expect(d.last == "250 2.0.0")
        #expect(d.commits.last?.body == "a\r\nb\r\nc\r\n")
        d.feed("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test>\r\nBDAT 4 LAST\r\na\rbc")
        #expect(d.last == "550 5.5.2")
        d.feed("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test>\r\nBDAT 2\r\nabBDAT 2 LAST\r\nc\r")
        #expect(d.last == "550 5.5.2") // ends in a bare CR
        #expect(d.commits.count == 1)
        var r = Driver(config: Driver.config { $0.bareNewline = .reject })
        r.feed("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test>\r\nBDAT 2 LAST\r\na\n")
        #expect(r.last == "550 5.5.2")
        r.feed("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test>\r\nBDAT 3 LAST\r\na\r\n")
        #expect(r.last == "250 2.0.0")
        #expect(r.commits.count == 1)
    }

    /// Normalising can never make an end of data or a command downstream:
    /// random text with every kind of line end and dot, taken under
    /// `normalize`, relayed as the client sends it (dot-stuffed), is read by
    /// a strict (`reject`) server as exactly one message with the same body.
    @Test func normalisedBodiesRelayAsExactlyOneMessage() {
        var rng = SystemRandomNumberGenerator()
        let alphabet: [[UInt8]] = [[46], [10], [13, 10], [46, 13, 10], [10, 46, 13, 10], [65], [77, 65, 73, 76, 32]]
        for _ in 0..<2000 {
            var text: [UInt8] = []
            for _ in 0..<Int.random(in: 0...20, using: &rng) { text += alphabet.randomElement(using: &rng)! }
            // Text that itself holds <CRLF>.<CRLF> ends early, as it must; skip it.
            let stream = [13, 10] + text + [13, 10, 46, 13, 10]
            let firstEnd = (0...(stream.count - 5)).first { Array(stream[$0..<($0 + 5)]) == [13, 10, 46, 13, 10] }
            if firstEnd != stream.count - 5 { continue }
            var d = Driver()
            d.feed("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test>\r\nDATA\r\n")
            d.feed(bytes: text + Array("\r\n.\r\n".utf8))
            #expect(d.commits.count == 1, "\(text)")
            guard let stored = d.commits.first?.body else { continue }
            var strict = Driver(config: Driver.config { $0.bareNewline = .reject })
            strict.feed("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test>\r\nDATA\r\n")
            strict.feed(bytes: ClientProtocol.dataText(Array(stored.utf8)))
            #expect(strict.commits.count == 1, "\(text)")
            #expect(strict.commits.first?.body == stored, "\(text)")
            #expect(strict.codes.count == 5) // EHLO, MAIL, RCPT, DATA and one 250
        }
    }

    /// Postfix's smtpd_junk_command_limit: past it, NOOP/RSET/VRFY/HELP count
    /// as errors, so a client that only chatters is closed; a message resets it.
    @Test func junkCommandsAreLimited() {
        var d = Driver(config: Driver.config { $0.maxJunkCommands = 5; $0.maxErrors = 3 })
        d.feed("EHLO c.test\r\n" + String(repeating: "NOOP\r\n", count: 5))
        d.feed("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test>\r\nDATA\r\nx\r\n.\r\n")
        #expect(d.last == "250 2.0.0")
        d.feed(String(repeating: "HELP\r\nRSET\r\n", count: 2) + "VRFY a\r\n") // 5 again: fine
        #expect(!d.closed)
        d.feed("NOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\n")
        #expect(d.closed)
        #expect(d.last == "421 4.7.0")
        #expect(d.codes.suffix(4) == ["250 2.0.0", "250 2.0.0", "250 2.0.0", "421 4.7.0"])
    }

    @Test func commandsPerSessionAreLimited() {
        var d = Driver(config: Driver.config { $0.maxCommands = 10 })
        d.feed("EHLO c.test\r\n")
        for _ in 0..<3 { d.feed("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test>\r\nDATA\r\nx\r\n.\r\n") }
        #expect(!d.closed)
        #expect(d.commits.count == 3)
        d.feed("NOOP\r\n")
        #expect(d.closed)
        #expect(d.replies.last?.text.contains("too many commands") == true)
    }

    @Test func emptyMessage() {
        var d = Driver()
        d.feed("EHLO c.test\r\nMAIL FROM:<>\r\nRCPT TO:<b@local.test>\r\nDATA\r\n.\r\n")
        #expect(d.last == "250 2.0.0")
        #expect(d.commits.first?.body == "")
        #expect(d.commits.first?.envelope.mailFrom == nil)
        // Found by the session fuzz target: after "DATA<LF>" the "." has no
        // CRLF before it on the raw stream, so it does not end the data.
        d.feed("MAIL FROM:<>\r\nRCPT TO:<b@local.test>\r\nDATA\n.\r\nx\r\n.\r\n")
        #expect(d.commits.count == 2)
        #expect(d.commits.last?.body == "\r\nx\r\n")
    }

    @Test func chunking() {
        var d = Driver()
        d.feed("EHLO c.test\r\nBDAT 3\r\nabc")
        #expect(d.last == "503 5.5.1") // payload swallowed, reply after it
        d.feed("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test>\r\nBDAT 5\r\nab\r\nc")
        #expect(d.last == "250 2.0.0")
        #expect(d.replies.last!.text.contains("5 octets"))
        d.feed("DATA\r\n")
        #expect(d.last == "503 5.5.1") // no mixing
        d.feed("BDAT 0 LAST\r\n")
        #expect(d.last == "250 2.0.0")
        #expect(d.commits.first?.body == "ab\r\nc")
        // Too big: the chunk is refused and the transaction ends.
        var small = Driver(config: Driver.config { $0.maxMessageSize = 4 })
        small.feed("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test>\r\nBDAT 3\r\nabcBDAT 3 LAST\r\ndef")
        #expect(small.codes.suffix(2) == ["250 2.0.0", "552 5.3.4"])
        small.feed("BDAT 1 LAST\r\nx")
        #expect(small.last == "503 5.5.1")
        #expect(small.commits.isEmpty)
    }

    @Test func smtputf8() {
        var d = Driver()
        d.feed("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<jöran@bücher.test>\r\n")
        #expect(d.last == "553 5.6.7")
        d.feed("RSET\r\nMAIL FROM:<ä@x.test> SMTPUTF8\r\nRCPT TO:<jöran@bücher.test>\r\nDATA\r\nx\r\n.\r\n")
        #expect(d.last == "250 2.0.0")
        let env = d.commits.first?.envelope
        #expect(env?.protocolName == "UTF8SMTP")
        #expect(env?.recipients.first?.mailbox.normalizedDomain == "xn--bcher-kva.test")
    }

    @Test func dsnParametersReachTheEnvelope() {
        var d = Driver()
        d.feed("EHLO c.test\r\nMAIL FROM:<a@x.test> RET=FULL ENVID=abc+2Bd\r\n")
        d.feed("RCPT TO:<b@local.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;b+40orig.test\r\nRCPT TO:<c@local.test> NOTIFY=NEVER\r\n")
        d.feed("DATA\r\nx\r\n.\r\n")
        let env = d.commits.first!.envelope
        #expect(env.parameters.ret == .full)
        #expect(env.parameters.envelopeID == "abc+d")
        #expect(env.recipients[0].notify?.storedForm == "SUCCESS,DELAY")
        #expect(env.recipients[0].orcpt?.storedForm == "rfc822;b@orig.test")
        #expect(env.recipients[1].notify?.storedForm == "NEVER")
        #expect(env.protocolName == "ESMTP")
    }

    @Test func errorLimitCloses() {
        var d = Driver(config: Driver.config { $0.maxErrors = 3 })
        d.feed("FOO\r\nBAR\r\nNOOP\r\nBAZ\r\nNOOP\r\n")
        #expect(d.codes == ["500 5.5.1", "500 5.5.1", "250 2.0.0", "500 5.5.1", "421 4.7.0"])
        #expect(d.closed)
    }

    /// Found by the session fuzz target: a reply that echoes a long
    /// parameter was longer than RFC 5321's 512 octets a reply line.
    @Test func replyLinesFit512Octets() {
        var d = Driver()
        d.feed("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test> " + String(repeating: "X", count: 900) + "=1\r\n")
        #expect(d.last == "555 5.5.4")
        for r in d.replies { for line in r.wireText.split(separator: "\r\n") { #expect(line.utf8.count + 2 <= 512) } }
        #expect(d.replies.last!.text.hasSuffix("..."))
    }

    @Test func badBytesInCommands() {
        var d = Driver()
        d.feed("NO\rOP\r\n\r\n")
        #expect(d.codes == ["500 5.5.2", "500 5.5.2"])
        // Control characters never reach a log line or Received: through EHLO.
        d.feed("EHLO evil\u{1B}[2J.test\r\nEHLO tab\there\r\nHELO del\u{7F}.test\r\n")
        #expect(d.codes.suffix(3) == ["500 5.5.2", "500 5.5.2", "500 5.5.2"])
    }

    @Test func commitFailureIsPassedOn() {
        var d = Driver()
        d.outcome = .rejected(SMTPReply(452, .mailSystemFull, "full"))
        d.feed("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test>\r\nDATA\r\nx\r\n.\r\n")
        #expect(d.last == "452 4.3.1")
        // The session is ready for a new transaction.
        d.outcome = .accepted(queueID: "Q2")
        d.feed("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test>\r\nDATA\r\nx\r\n.\r\n")
        #expect(d.replies.last?.text == "Ok: queued as Q2")
    }

    @Test func framesAreIgnoredWhileCommitting() {
        var s = SMTPServerSession(config: Driver.config(), client: ClientInfo(address: nil, addressText: "", trusted: true))
        for l in ["EHLO c.test", "MAIL FROM:<a@x.test>", "RCPT TO:<b@local.test>", "DATA", "x", "."] {
            _ = s.receive(.line(ByteBuffer(string: l), .crlf))
        }
        #expect(s.state == .committing)
        #expect(s.inTransaction)
        #expect(s.receive(.line(ByteBuffer(string: "NOOP"), .crlf)) == nil)
        _ = s.commitFinished(.accepted(queueID: "Q"))
        #expect(s.state == .ready)
        #expect(!s.inTransaction)
    }

    @Test func timeoutAndShutdownReplies() {
        var s = SMTPServerSession(config: Driver.config(), client: ClientInfo(address: nil, addressText: "", trusted: true))
        #expect(s.timedOut().wireText == "421 4.4.2 mx.test Error: timeout exceeded\r\n")
        #expect(s.state == .closed)
        #expect(s.shuttingDown().code == 421)
    }
}

@Suite struct StartTLSTests {
    func tlsDriver() -> Driver { Driver(config: Driver.config { $0.startTLS = true }) }

    @Test func offeredOnlyWithACertificateAndOnlyOnce() {
        var plain = Driver()
        plain.feed("EHLO c.test\r\nSTARTTLS\r\n")
        #expect(!plain.replies[0].lines.contains("STARTTLS"))
        #expect(plain.last == "502 5.5.1")
        var d = tlsDriver()
        d.feed("STARTTLS\r\n")
        #expect(d.last == "503 5.5.1") // EHLO first
        d.feed("EHLO c.test\r\n")
        #expect(d.replies.last!.lines.contains("STARTTLS"))
        d.feed("MAIL FROM:<a@x.test>\r\nSTARTTLS\r\nRSET\r\n")
        #expect(d.codes.suffix(3) == ["250 2.1.0", "503 5.5.1", "250 2.0.0"]) // not inside a transaction
    }

    @Test func theSessionStartsOverAfterTheHandshake() {
        var s = SMTPServerSession(config: Driver.config { $0.startTLS = true }, client: ClientInfo(address: nil, addressText: "192.0.2.1", trusted: true))
        for l in ["EHLO c.test", "STARTTLS"] {
            let a = s.receive(.line(ByteBuffer(string: l), .crlf))
            if l == "STARTTLS" {
                guard case .startTLS(let r)? = a else { Issue.record("expected startTLS"); return }
                #expect(r.wireText == "220 2.0.0 Ready to start TLS\r\n")
            }
        }
        s.tlsEstablished("TLSv1.3")
        // RFC 3207 §4.2: nothing from before TLS counts; EHLO again.
        guard case .reply(let r, _)? = s.receive(.line(ByteBuffer(string: "MAIL FROM:<a@x.test>"), .crlf)) else { Issue.record("reply"); return }
        #expect(r.first?.code == 503)
        guard case .reply(let ehlo, _)? = s.receive(.line(ByteBuffer(string: "EHLO c.test"), .crlf)) else { Issue.record("ehlo"); return }
        #expect(!ehlo[0].lines.contains("STARTTLS"))
        guard case .reply(let again, _)? = s.receive(.line(ByteBuffer(string: "STARTTLS"), .crlf)) else { Issue.record("again"); return }
        #expect(again.first?.code == 503)
        for l in ["MAIL FROM:<a@x.test>", "RCPT TO:<b@local.test>", "DATA", "x", "."] {
            if case .commit(let env, _)? = s.receive(.line(ByteBuffer(string: l), .crlf)) {
                #expect(env.protocolName == "ESMTPS")
                #expect(env.tls == "TLSv1.3")
            }
        }
    }
}
