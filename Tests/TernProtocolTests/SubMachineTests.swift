import NIOCore
import Testing
@testable import TernProtocol

/// The session's sub-flows, driven directly.
@Suite struct MessageTextTests {
    let config = SessionConfig(hostname: "mx.test")

    @Test func dataEndsOnlyAfterCRLF() {
        var t = MessageText(data: config, commandEnding: .crlf)
        do { let r = t.line(ByteBuffer(string: "hello"), .bareLF); #expect(!r) }
        do { let r = t.line(ByteBuffer(string: "."), .crlf); #expect(!r) } // <LF>.<CRLF>: text
        do { let r = t.line(ByteBuffer(string: "x"), .crlf); #expect(!r) }
        do { let r = t.line(ByteBuffer(string: "."), .crlf); #expect(r) }
        #expect(t.refusal == nil)
        #expect(String(buffer: t.body) == "hello\r\n\r\nx\r\n")
        var afterBareLF = MessageText(data: config, commandEnding: .bareLF)
        do { let r = afterBareLF.line(ByteBuffer(string: "."), .crlf); #expect(!r) }
        var long = MessageText(data: config, commandEnding: .crlf)
        long.overlongLine(length: 1002, ending: .bareLF)
        do { let r = long.line(ByteBuffer(string: "."), .crlf); #expect(!r) }
        #expect(long.refusal?.code == 500)
    }

    @Test func chunksFollowTheLineRules() {
        var t = MessageText(chunks: config)
        do { let r = t.announce(chunk: 4); #expect(r) }
        t.chunk(ByteBuffer(string: "a\nb\r"))
        t.chunk(ByteBuffer(string: "\n"))
        t.lastChunkEnded()
        #expect(t.refusal == nil && String(buffer: t.body) == "a\r\nb\r\n")
        var cr = MessageText(chunks: config)
        cr.chunk(ByteBuffer(string: "a\r"))
        cr.lastChunkEnded()
        #expect(cr.refusal?.code == 550)
        var big = MessageText(chunks: { var c = config; c.maxMessageSize = 3; return c }())
        do { let r = big.announce(chunk: 4); #expect(!r) }
        var mem = MessageText(data: config, commandEnding: .crlf)
        mem.run(ByteBuffer(string: "abc\r\n"))
        mem.dropForMemory()
        #expect(mem.body.readableBytes == 0 && mem.refusal?.code == 452)
    }
}

@Suite struct SASLExchangeTests {
    @Test func loginInTwoSteps() {
        var (x, first) = SASLExchange.start(.login, initial: nil)
        guard case .challenge(let c1) = first else { Issue.record("challenge"); return }
        #expect(c1.lines == ["VXNlcm5hbWU6"])
        guard case .challenge = x.respond(Substring(Base64.encode(Array("alice".utf8)))) else { Issue.record("password"); return }
        guard case .credentials(let cred, .login) = x.respond(Substring(Base64.encode(Array("pw".utf8)))) else { Issue.record("cred"); return }
        #expect(cred.username == "alice" && cred.password == "pw")
    }

    @Test func loginWithTheUserAsInitialResponse() {
        var (x, first) = SASLExchange.start(.login, initial: Substring(Base64.encode(Array("alice".utf8))))
        guard case .challenge(let c) = first else { Issue.record("password challenge"); return }
        #expect(c.lines == ["UGFzc3dvcmQ6"])
        guard case .credentials(let cred, .login) = x.respond(Substring(Base64.encode(Array("pw".utf8)))) else { Issue.record("cred"); return }
        #expect(cred.username == "alice")
    }

    @Test func plainWithInitialResponseAndCancel() {
        let (_, done) = SASLExchange.start(.plain, initial: Substring(Base64.encode(Array("\u{0}bob\u{0}secret".utf8))))
        guard case .credentials(let cred, .plain) = done else { Issue.record("plain"); return }
        #expect(cred.username == "bob")
        var (x, _) = SASLExchange.start(.plain, initial: nil)
        guard case .failed(let r) = x.respond("*") else { Issue.record("cancel"); return }
        #expect(r.code == 501)
        guard case .failed(let bad) = x.respond("!!!") else { Issue.record("bad"); return }
        #expect(bad.code == 501)
    }
}
