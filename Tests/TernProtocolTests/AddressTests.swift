import Testing
@testable import TernProtocol

@Suite struct AddressTests {
    func path(_ s: String, utf8: Bool = false, null: Bool = true) -> Result<SMTPPath, AddressError> {
        AddressParser.parsePath(Substring(s), allowUTF8: utf8, allowNull: null, allowPostmaster: true)
    }

    func mailbox(_ s: String, utf8: Bool = false) -> Mailbox? {
        if case .success(.mailbox(let m)) = path(s, utf8: utf8) { return m }
        return nil
    }

    @Test func simpleMailbox() {
        let m = mailbox("<alice@Example.TEST>")
        #expect(m?.localPart == "alice")
        #expect(m?.domain == "Example.TEST")
        #expect(m?.normalizedDomain == "example.test")
        #expect(m?.address == "alice@Example.TEST")
    }

    @Test(arguments: [
        "<first.last@sub.example.test>", "<a+tag@x.test>", "<o'brien@x.test>", "<!#$%&'*+-/=?^_`{|}~@x.test>",
        "<\"john doe\"@x.test>", "<\"a\\\"b\"@x.test>", "<u@[192.0.2.1]>", "<u@[IPv6:2001:db8::1]>",
        "<u@x-y.test>", "<u@1.test>",
    ])
    func validAddresses(_ text: String) {
        #expect(mailbox(text) != nil, "\(text) should parse")
    }

    @Test(arguments: [
        "alice@x.test", "<alice@x.test", "<alice>", "<@x.test>", "<a..b@x.test>", "<.a@x.test>", "<a.@x.test>",
        "<a@-x.test>", "<a@x-.test>", "<a@x..test>", "<a@x.test.>", "<a@x_y.test>", "<a b@x.test>", "<\"open@x.test>",
        "<u@other.test@local.test>", "<u@[300.1.1.1]>", "<u@[IPv6:zz::1]>", "<a@>", "<a@x.test>>",
    ])
    func invalidAddresses(_ text: String) {
        if case .success = path(text) { Issue.record("\(text) should not parse") }
    }

    @Test func nullAndPostmaster() {
        #expect(path("<>") == .success(.null))
        #expect(path("<>", null: false).isFailure)
        #expect(path("<Postmaster>") == .success(.postmaster))
        #expect(path("<POSTMASTER>") == .success(.postmaster))
    }

    @Test func sourceRouteIsParsedAndIgnored() {
        // RFC 5321 §3.6.1 / Appendix C: the route is ignored, the mailbox used.
        let m = mailbox("<@a.test,@b.test:u@c.test>")
        #expect(m?.address == "u@c.test")
        #expect(path("<@a.test:>").isFailure)
        #expect(path("<@bad_host:u@c.test>").isFailure)
    }

    @Test func lengthLimits() {
        let local64 = String(repeating: "a", count: 64)
        #expect(mailbox("<\(local64)@x.test>") != nil)
        #expect(path("<\(local64)a@x.test>") == .failure(.tooLong("local part longer than 64 octets")))
        let label = String(repeating: "d", count: 63)
        #expect(mailbox("<u@\(label).test>") != nil)
        #expect(path("<u@\(label)d.test>").isFailure) // label over 63
        let longDomain = (0..<5).map { _ in label }.joined(separator: ".")
        if case .failure(.tooLong) = path("<u@\(longDomain)>") {} else { Issue.record("path over 256 must fail as too long") }
    }

    @Test func utf8NeedsPermission() {
        #expect(path("<jöran@bücher.test>") == .failure(.nonASCII))
        let m = mailbox("<jöran@bücher.test>", utf8: true)
        #expect(m?.needsSMTPUTF8 == true)
        #expect(m?.normalizedDomain == "xn--bcher-kva.test")
        #expect(mailbox("<用户@例子.测试>", utf8: true)?.normalizedDomain == "xn--fsqu00a.xn--0zwm56d")
    }

    @Test func unquotedLocalPart() {
        #expect(mailbox("<\"a\\\"b c\"@x.test>")?.unquotedLocalPart == "a\"b c")
        #expect(mailbox("<\"u@other.test\"@local.test>")?.unquotedLocalPart == "u@other.test")
    }

    /// The byte-wise checks for ASCII text agree with the scalar-wise ones
    /// on random strings of the characters that matter.
    @Test func asciiFastPathsAgreeWithTheScalarChecks() {
        var rng = SystemRandomNumberGenerator()
        let alphabet: [Character] = ["a", "Z", "0", "9", "-", ".", "_", "!", "~", "@", " ", "\"", "+"]
        var samples = ["", ".", "a", "a.", ".a", "a..b", "-a.b", "a-.b", "a-b.c", "x.test", String(repeating: "a", count: 63) + ".b",
                       String(repeating: "a", count: 64) + ".b", "a.b-"]
        for _ in 0..<3000 {
            samples.append(String((0..<Int.random(in: 0...8, using: &rng)).map { _ in alphabet.randomElement(using: &rng)! }))
        }
        for text in samples {
            let s = Substring(text)
            #expect(AddressParser.asciiDomain(s) == AddressParser.scalarDomain(s, allowUTF8: false), "\(text)")
            #expect(AddressParser.asciiDotString(s) == AddressParser.scalarDotString(s, allowUTF8: false), "\(text)")
        }
        #expect(AddressParser.asciiDomain("bücher.test") == nil && AddressParser.isDomain("bücher.test", allowUTF8: true))
    }

    @Test func punycodeRFC3492Vectors() {
        #expect(Punycode.encode("bücher") == "bcher-kva")
        #expect(Punycode.encode("münchen") == "mnchen-3ya")
        // RFC 3492 §7.1 (B) Chinese (simplified)
        #expect(Punycode.encode("他们为什么不说中文") == "ihqwcrb4cv8a8dqg056pqjye")
        #expect(IDNA.toASCII("Straße.TEST") == "xn--strae-oqa.test")
        #expect(IDNA.toASCII("a..b") == nil)
        // The ASCII fast path: lower-cased, the same labels refused as before.
        #expect(IDNA.toASCII("Mail.Example.TEST") == "mail.example.test")
        #expect(IDNA.toASCII("mail.example.test") == "mail.example.test")
        for bad in ["", ".", ".a", "a.", "a..b", String(repeating: "a", count: 254)] { #expect(IDNA.toASCII(bad) == nil, "\(bad)") }
        #expect(IDNA.toASCII(String(repeating: "a.", count: 126) + "b") != nil) // 253 octets
        #expect(IDNA.toASCII("Straße.a..b") == nil && IDNA.toASCII("x.bücher.") == nil)
    }

    /// Found by the address fuzz target: "." followed by a combining mark is
    /// one Character, and the label split missed it, so an A-label held dots.
    @Test func idnaSplitsOnTheDotScalar() {
        #expect(IDNA.toASCII("a.\u{05B2}b.test") == "a.xn--b-9fc.test")
        #expect(IDNA.toASCII("bücher.test") == "xn--bcher-kva.test")
        #expect(IDNA.toASCII("a\u{0}b.test") == nil)
        #expect(IDNA.toASCII("a b.test") == nil)
        #expect(IDNA.toASCII("ü\u{7}.test") == nil)
    }

}

extension Result {
    var isFailure: Bool { if case .failure = self { return true } else { return false } }
}
