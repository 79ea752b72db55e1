import Foundation
import NIOCore
import Testing
@testable import TernProtocol

@Suite struct ClientProtocolTests {
    @Test func replyParser() throws {
        var p = ReplyParser()
        #expect(try p.feed("250-mx.test greets you") == nil)
        #expect(try p.feed("250-PIPELINING") == nil)
        let r = try #require(try p.feed("250 SIZE 1000"))
        #expect(r.code == 250 && r.lines == ["mx.test greets you", "PIPELINING", "SIZE 1000"] && r.enhanced == nil)
        let e = try #require(try p.feed("550 5.1.1 no such user"))
        #expect(e.enhanced == .badDestinationMailbox && e.text == "no such user")
        #expect(try p.feed("221") == SMTPReply(221, nil, ""))
        // An enhanced code of the wrong class is text, not a code.
        #expect(try p.feed("250 4.0.0 odd")?.enhanced == nil)
        // Every line's code is dropped; a code alone leaves empty text.
        let multi = try #require(try { _ = try p.feed("250-2.1.5 first"); return try p.feed("250 2.1.5 second") }())
        #expect(multi.enhanced == .destinationOK && multi.lines == ["first", "second"])
        #expect(try p.feed("250 2.0.0") == SMTPReply(250, .ok, ""))
        // RFC 3463 codes are digits: no sign, nothing glued on.
        #expect(try p.feed("250 +2.0.0 signed")?.enhanced == nil)
        #expect(try p.feed("250 2.0.0x glued")?.lines == ["2.0.0x glued"])
        #expect(try p.feed("250 2.0.0  two spaces")?.lines == [" two spaces"])
        var bad = ReplyParser()
        #expect(throws: ReplyParser.Failure.self) { try bad.feed("hello") }
        #expect(throws: ReplyParser.Failure.self) { try bad.feed("99 x") }
        var mixed = ReplyParser()
        _ = try mixed.feed("250-a")
        #expect(throws: ReplyParser.Failure.self) { try mixed.feed("251 b") }
    }

    let env = ClientEnvelope(mailFrom: "a@x.test", size: 1234, bodyType: "8BITMIME", smtputf8: false, ret: "HDRS", envID: "id+1",
                             recipients: [ClientRecipient(id: 1, address: "b@y.test", notify: "SUCCESS,FAILURE", orcpt: "rfc822;b=orig@y.test")])

    @Test func replyTextHasNoControlCharacters() throws {
        var p = ReplyParser()
        let r = try #require(try p.feed("550 5.1.1 no\u{1B}[31m such\tuser\u{7}"))
        #expect(r.text == "no\\x1B[31m such\\x09user\\x07")
        #expect("a\u{85}b\nc".escapingControlCharacters(keepingNewlines: true) == "a\\x85b\nc")
    }

    @Test func replyBoundsAndSteps() throws {
        var p = ReplyParser()
        for _ in 0..<99 { #expect(try p.feed("250-x") == nil) }
        #expect(try p.feed("250 last")?.lines.count == 100)
        for _ in 0..<100 { _ = try p.feed("250-x") }
        #expect(throws: ReplyParser.Failure.tooLong) { try p.feed("250-one too many") }
        var big = ReplyParser()
        #expect(throws: ReplyParser.Failure.tooLong) {
            for _ in 0..<20 { _ = try big.feed("250-" + String(repeating: "y", count: 1000)) }
        }
        let long = SMTPReply(550, .badDestinationMailbox, lines: Array(repeating: String(repeating: "z", count: 300), count: 10))
        let kept = long.keepingText(1000)
        #expect(kept.text.utf8.count <= 1000 + 12 && kept.lines.last!.hasSuffix("…") && kept.code == 550)
        #expect(SMTPReply(250, .ok, "short").keepingText(1000) == SMTPReply(250, .ok, "short"))
        // RFC 5321 §4.3.2: which replies can answer which command.
        #expect(ClientStep.data.accepts(SMTPReply(354, nil, "go")))
        #expect(!ClientStep.data.accepts(SMTPReply(250, .ok, "ok")))
        #expect(!ClientStep.rcpt.accepts(SMTPReply(354, nil, "go")))
        #expect(!ClientStep.endOfData.accepts(SMTPReply(250, .senderOK, "ok")))
        #expect(!ClientStep.endOfData.accepts(SMTPReply(250, .destinationOK, "ok")))
        #expect(ClientStep.endOfData.accepts(SMTPReply(250, .ok, "queued")))
        #expect(ClientStep.endOfData.accepts(SMTPReply(250, nil, "Ok")))
        #expect(ClientStep.mail.accepts(SMTPReply(451, .systemError, "later")))
        #expect(!ClientStep.greeting.accepts(SMTPReply(250, nil, "hi")))
    }

    @Test func commandsFollowCapabilities() {
        let full = ServerCapabilities(ehloReply: SMTPReply(250, nil, lines: ["mx", "PIPELINING", "SIZE 5000", "DSN", "8BITMIME", "SMTPUTF8"]))
        #expect(full.pipelining && full.dsn && full.sizeLimit == 5000)
        #expect(ClientProtocol.mailCommand(env, full) == "MAIL FROM:<a@x.test> SIZE=1234 BODY=8BITMIME RET=HDRS ENVID=id+2B1")
        #expect(ClientProtocol.rcptCommand(env.recipients[0], full) == "RCPT TO:<b@y.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+3Dorig@y.test")
        let bare = ServerCapabilities(ehloReply: SMTPReply(250, nil, lines: ["mx"]))
        #expect(ClientProtocol.mailCommand(env, bare) == "MAIL FROM:<a@x.test>")
        #expect(ClientProtocol.rcptCommand(env.recipients[0], bare) == "RCPT TO:<b@y.test>")
        #expect(ClientProtocol.mailCommand(env, ServerCapabilities()) == "MAIL FROM:<a@x.test>") // HELO: no parameters
        var null = env
        null.mailFrom = ""
        #expect(ClientProtocol.mailCommand(null, bare) == "MAIL FROM:<>")
    }

    @Test func preflightRefusals() {
        let small = ServerCapabilities(ehloReply: SMTPReply(250, nil, lines: ["mx", "SIZE 1000"]))
        #expect(ClientProtocol.preflight(env, small)?.wireText.hasPrefix("552 5.3.4") == true)
        let unlimited = ServerCapabilities(ehloReply: SMTPReply(250, nil, lines: ["mx", "SIZE 0"]))
        #expect(ClientProtocol.preflight(env, unlimited) == nil)
        var utf8 = env
        utf8.recipients[0].address = "jörg@y.test"
        #expect(ClientProtocol.preflight(utf8, unlimited)?.enhanced == .nonASCIINotPermitted)
        let withUTF8 = ServerCapabilities(ehloReply: SMTPReply(250, nil, lines: ["mx", "SMTPUTF8"]))
        #expect(ClientProtocol.preflight(utf8, withUTF8) == nil)
        #expect(ClientProtocol.mailCommand(utf8, withUTF8) == "MAIL FROM:<a@x.test> SMTPUTF8")
    }

    @Test func dataTextStuffsDotsAndFixesLineEnds() {
        func t(_ s: String) -> String { String(decoding: ClientProtocol.dataText(Array(s.utf8)), as: UTF8.self) }
        #expect(t("a\r\n.b\r\n..c\r\n") == "a\r\n..b\r\n...c\r\n.\r\n")
        #expect(t(".\r\n") == "..\r\n.\r\n")
        #expect(t("bare\nlf") == "bare\r\nlf\r\n.\r\n")
        #expect(t("") == ".\r\n")
        #expect(t("x\r") == "x\r\n.\r\n")
        // A bare CR is never sent alone: it ends a line, and a dot after it is stuffed.
        #expect(t("a\rb") == "a\r\nb\r\n.\r\n")
        #expect(t("a\r.\r\n") == "a\r\n..\r\n.\r\n")
        #expect(t("a\r\r\n") == "a\r\n\r\n.\r\n")
    }

    @Test func outcomesFromReplies() {
        #expect(RecipientOutcome.from(SMTPReply(250, .ok, "ok")) == .delivered(SMTPReply(250, .ok, "ok")))
        #expect(RecipientOutcome.from(SMTPReply(451, .systemError, "x")) == .deferred(SMTPReply(451, .systemError, "x")))
        #expect(RecipientOutcome.from(SMTPReply(550, .badDestinationMailbox, "x")) == .bounced(SMTPReply(550, .badDestinationMailbox, "x")))
    }
}

@Suite struct DataTextEquivalenceTests {
    /// The plain byte-by-byte rule: dot-stuff line starts; CRLF, a bare LF
    /// and a bare CR each become one CRLF; end with CRLF "." CRLF.
    static func reference(_ body: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        var atLineStart = true
        var i = 0
        while i < body.count {
            let b = body[i]
            if atLineStart && b == UInt8(ascii: ".") { out.append(UInt8(ascii: ".")) }
            if b == 13 || b == 10 {
                out += [13, 10]
                if b == 13 && i + 1 < body.count && body[i + 1] == 10 { i += 1 }
                atLineStart = true
            } else {
                out.append(b)
                atLineStart = false
            }
            i += 1
        }
        if !out.isEmpty && !atLineStart { out += [13, 10] }
        return out + Array(".\r\n".utf8)
    }

    /// RFC 5321 §2.3.8: whatever the stored body holds, no CR or LF goes out alone.
    static func hasBareLineEnd(_ out: [UInt8]) -> Bool {
        for (i, b) in out.enumerated() {
            if b == 13 && (i + 1 >= out.count || out[i + 1] != 10) { return true }
            if b == 10 && (i == 0 || out[i - 1] != 13) { return true }
        }
        return false
    }

    @Test func theLineCopyingScanEqualsTheByteRule() {
        var rng = SystemRandomNumberGenerator()
        let alphabet: [UInt8] = [UInt8(ascii: "."), 13, 10, UInt8(ascii: "a"), UInt8(ascii: "b")]
        for length in 0..<40 {
            for _ in 0..<200 {
                let body = (0..<length).map { _ in alphabet.randomElement(using: &rng)! }
                #expect(ClientProtocol.dataText(body) == DataTextEquivalenceTests.reference(body), "\(body)")
                #expect(ClientProtocol.dataText(Data(body)) == DataTextEquivalenceTests.reference(body))
                #expect(!DataTextEquivalenceTests.hasBareLineEnd(ClientProtocol.dataText(body)), "\(body)")
            }
        }
    }

    /// A large message goes out in pieces (each ends after a line feed,
    /// each stuffed into the outgoing buffer alone): together they are the
    /// whole message's DATA text, whatever the piece size.
    @Test func piecesStuffedOneByOneMakeTheWholeText() {
        var rng = SystemRandomNumberGenerator()
        let alphabet: [UInt8] = [UInt8(ascii: "."), 13, 10, UInt8(ascii: "a"), UInt8(ascii: "b")]
        for length in 0..<60 {
            for _ in 0..<100 {
                let body = (0..<length).map { _ in alphabet.randomElement(using: &rng)! }
                let whole = ClientProtocol.dataText(body)
                for size in [1, 2, 3, 7, 64] {
                    var out = ByteBuffer()
                    body.withUnsafeBytes { raw in
                        var offset = 0
                        repeat {
                            let end = ClientProtocol.piece(of: raw, from: offset, size: size)
                            #expect(end > offset || raw.isEmpty)
                            #expect(end == raw.count || raw[end - 1] == 10)
                            ClientProtocol.dataText(UnsafeRawBufferPointer(rebasing: raw[offset..<end]), into: &out, final: end == raw.count)
                            offset = end
                        } while offset < raw.count
                    }
                    #expect(Array(out.readableBytesView) == whole, "\(body) in pieces of \(size)")
                }
            }
        }
    }
}
