// SMTP AUTH (RFC 4954) and listener roles in the pure session machine.
import NIOCore
import Testing
@testable import TernProtocol

func b64(_ s: String) -> String { Base64.encode(Array(s.utf8)) }

@Suite struct Base64Tests {
    @Test func roundTripsAndRFC4648Vectors() {
        let vectors = ["": "", "f": "Zg==", "fo": "Zm8=", "foo": "Zm9v", "foob": "Zm9vYg==", "fooba": "Zm9vYmE=", "foobar": "Zm9vYmFy"]
        for (plain, encoded) in vectors {
            #expect(Base64.encode(Array(plain.utf8)) == encoded)
            #expect(Base64.decode(encoded) == Array(plain.utf8))
        }
        let all = (0...255).map { UInt8($0) }
        #expect(Base64.decode(Base64.encode(all)) == all)
    }

    @Test func rejectsWhatIsNotCanonical() {
        for bad in ["Zg", "Zg=", "Z===", "Zm9v!", "Zg==Zg==", "Zh==", "Zm9=", "Zm 9v", "=Zm9"] {
            #expect(Base64.decode(bad) == nil, "\(bad)")
        }
    }
}

@Suite struct SASLTests {
    @Test func plainForms() {
        #expect(SASL.decodePlain(Array("\0alice\0secret".utf8)) == .success(Credentials(username: "alice", password: "secret")))
        #expect(SASL.decodePlain(Array("alice\0alice\0secret".utf8)) == .success(Credentials(username: "alice", password: "secret")))
        #expect(SASL.decodePlain(Array("admin\0alice\0secret".utf8)) == .failure(.authzidNotPermitted))
        #expect(SASL.decodePlain(Array("alice\0secret".utf8)) == .failure(.malformed))
        #expect(SASL.decodePlain(Array("\0\0secret".utf8)) == .failure(.malformed))
        #expect(SASL.decodePlain(Array("\0alice\0".utf8)) == .failure(.malformed))
        #expect(SASL.decodePlain([0, 0x61, 0, 0xFF]) == .failure(.malformed)) // not UTF-8
        // A NUL inside the password is part of it (RFC 4616 forbids it; we do not split there).
        #expect(SASL.decodePlain(Array("\0a\0p\0q".utf8)) == .success(Credentials(username: "a", password: "p\0q")))
    }

    @Test func credentialsNeverPrintTheirPassword() {
        let c = Credentials(username: "alice", password: "hunter2")
        #expect(!"\(c)".contains("hunter2"))
        #expect(!String(reflecting: c).contains("hunter2"))
    }

    @Test func senderOwnership() {
        let id = AuthIdentity(name: "alice", allowedSenders: ["alice@Example.test", "@corp.test"])
        func mb(_ s: String) -> Mailbox { try! AddressParser.parseMailbox(Substring(s), allowUTF8: true).get() }
        #expect(id.mayUse(sender: mb("alice@example.test")))
        #expect(id.mayUse(sender: mb("ALICE@EXAMPLE.TEST")))
        #expect(id.mayUse(sender: mb("anyone@corp.test")))
        #expect(!id.mayUse(sender: mb("bob@example.test")))
        #expect(!id.mayUse(sender: mb("alice@sub.corp.test")))
        #expect(id.mayUse(sender: nil)) // <>
        #expect(AuthIdentity(name: "relay", allowedSenders: ["*"]).mayUse(sender: mb("x@y.test")))
        #expect(!AuthIdentity(name: "none", allowedSenders: []).mayUse(sender: mb("x@y.test")))
    }
}

@Suite struct AuthSessionTests {
    static let alice = (password: "correct horse", senders: ["alice@example.test"])

    func driver(role: ListenerRole = .submission, tls: Bool = true, plaintext: Bool = false,
                address: String = "192.0.2.7") -> Driver {
        var d = Driver(config: Driver.config {
            $0.role = role
            $0.authEnabled = true
            $0.startTLS = true
            $0.plaintextAuthOnLoopback = plaintext
        }, trusted: false, address: address)
        d.accounts["alice"] = AuthSessionTests.alice
        if tls { d.session.tlsEstablished("TLSv1.3") }
        return d
    }

    @Test func plainWithInitialResponse() {
        var d = driver()
        d.feed("EHLO c.test\r\n")
        #expect(d.replies[0].lines.contains("AUTH PLAIN LOGIN"))
        d.feed("AUTH PLAIN \(b64("\0alice\0correct horse"))\r\n")
        #expect(d.last == "235 2.7.0")
        #expect(d.checked == [Credentials(username: "alice", password: "correct horse")])
        // After AUTH: EHLO no longer offers it, a second AUTH is refused.
        d.feed("EHLO c.test\r\n")
        #expect(!d.replies.last!.lines.contains { $0.hasPrefix("AUTH") })
        d.feed("AUTH PLAIN \(b64("\0alice\0correct horse"))\r\n")
        #expect(d.last == "503 5.5.1")
        d.feed("MAIL FROM:<alice@example.test>\r\nRCPT TO:<anyone@elsewhere.test>\r\nDATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n")
        #expect(d.codes.suffix(4) == ["250 2.1.0", "250 2.1.5", "354", "250 2.0.0"])
        #expect(d.commits.count == 1)
        #expect(d.commits[0].envelope.authUser == "alice")
        #expect(d.commits[0].envelope.protocolName == "ESMTPSA") // RFC 3848
    }

    @Test func plainWithContinuationAndLogin() {
        var d = driver()
        d.feed("EHLO c.test\r\nAUTH PLAIN\r\n")
        #expect(d.transcript.hasSuffix("334 \r\n"))
        d.feed("\(b64("\0alice\0correct horse"))\r\n")
        #expect(d.last == "235 2.7.0")

        var l = driver()
        l.feed("EHLO c.test\r\nauth login\r\n")
        #expect(l.transcript.hasSuffix("334 VXNlcm5hbWU6\r\n"))
        l.feed("\(b64("alice"))\r\n")
        #expect(l.transcript.hasSuffix("334 UGFzc3dvcmQ6\r\n"))
        l.feed("\(b64("correct horse"))\r\n")
        #expect(l.last == "235 2.7.0")

        // LOGIN with the user name as initial response.
        var i = driver()
        i.feed("EHLO c.test\r\nAUTH LOGIN \(b64("alice"))\r\n")
        #expect(i.transcript.hasSuffix("334 UGFzc3dvcmQ6\r\n"))
        i.feed("\(b64("correct horse"))\r\n")
        #expect(i.last == "235 2.7.0")
    }

    @Test func badPasswordMalformedAndCancelled() {
        var d = driver()
        d.feed("EHLO c.test\r\nAUTH PLAIN \(b64("\0alice\0wrong"))\r\n")
        #expect(d.last == "535 5.7.8")
        d.feed("AUTH PLAIN not*base64\r\n")
        #expect(d.last == "501 5.5.2")
        d.feed("AUTH PLAIN \(b64("no-nuls-here"))\r\n")
        #expect(d.last == "501 5.5.2")
        d.feed("AUTH LOGIN\r\n*\r\n")
        #expect(d.last == "501 5.7.0")
        d.feed("AUTH PLAIN\r\n*\r\n")
        #expect(d.last == "501 5.7.0")
        d.feed("AUTH PLAIN \(b64("bob\0alice\0correct horse"))\r\n")
        #expect(d.last == "535 5.7.8") // no proxy authorization
        d.feed("AUTH CRAM-MD5\r\n")
        #expect(d.last == "504 5.5.4")
        d.feed("AUTH\r\n")
        #expect(d.last == "501 5.5.4")
        // Nothing but the one well-formed wrong password reached the authenticator.
        #expect(d.checked == [Credentials(username: "alice", password: "wrong")])
        // The session still works; the failures count as errors.
        #expect(d.session.errorCount == 8)
        d.feed("AUTH LOGIN \(b64("alice"))\r\n\(b64("correct horse"))\r\n")
        #expect(d.last == "235 2.7.0")
    }

    @Test func emptyInitialResponseAndOverlongLine() {
        var d = driver()
        d.feed("EHLO c.test\r\nAUTH PLAIN =\r\n")
        #expect(d.last == "501 5.5.2") // "=" is empty, and empty is not a PLAIN message
        d.feed("AUTH PLAIN\r\n" + String(repeating: "A", count: 4000) + "\r\n")
        #expect(d.last == "500 5.5.2")
        #expect(d.session.state == .ready)
    }

    @Test func notOfferedWithoutTLSUnlessLoopbackPlaintextAllowed() {
        var d = driver(tls: false)
        d.feed("EHLO c.test\r\n")
        #expect(!d.replies[0].lines.contains { $0.hasPrefix("AUTH") })
        #expect(d.replies[0].lines.contains("STARTTLS"))
        d.feed("AUTH PLAIN \(b64("\0alice\0correct horse"))\r\n")
        #expect(d.last == "538 5.7.11")
        #expect(d.checked.isEmpty)
        d.feed("MAIL FROM:<alice@example.test>\r\n")
        #expect(d.last == "530 5.7.0")

        // Allowed in plaintext on this listener, but the client is not on loopback.
        var remote = driver(tls: false, plaintext: true)
        remote.feed("EHLO c.test\r\nAUTH PLAIN \(b64("\0alice\0correct horse"))\r\n")
        #expect(remote.last == "538 5.7.11")

        var local = driver(tls: false, plaintext: true, address: "127.0.0.1")
        local.feed("EHLO c.test\r\n")
        #expect(local.replies[0].lines.contains("AUTH PLAIN LOGIN"))
        local.feed("AUTH PLAIN \(b64("\0alice\0correct horse"))\r\n")
        #expect(local.last == "235 2.7.0")
        local.feed("MAIL FROM:<alice@example.test>\r\nRCPT TO:<x@far.test>\r\nDATA\r\nhi\r\n.\r\n")
        #expect(local.commits.first?.envelope.protocolName == "ESMTPA")
    }

    @Test func authDisabledOrOutOfPlace() {
        var none = Driver(config: Driver.config { $0.startTLS = true })
        none.feed("EHLO c.test\r\nAUTH PLAIN \(b64("\0alice\0x"))\r\n")
        #expect(none.last == "502 5.5.1")
        var d = driver()
        d.feed("AUTH PLAIN \(b64("\0alice\0correct horse"))\r\n")
        #expect(d.last == "503 5.5.1") // before EHLO
        d.feed("HELO c.test\r\nAUTH PLAIN \(b64("\0alice\0correct horse"))\r\n")
        #expect(d.last == "503 5.5.1") // HELO has no extensions
    }

    @Test func submissionRequiresAuthAndOwnSender() {
        var d = driver()
        d.feed("EHLO c.test\r\nMAIL FROM:<alice@example.test>\r\n")
        #expect(d.last == "530 5.7.0")
        d.feed("AUTH PLAIN \(b64("\0alice\0correct horse"))\r\n")
        d.feed("MAIL FROM:<mallory@example.test>\r\n")
        #expect(d.last == "553 5.7.1")
        #expect(d.replies.last!.text.contains("not owned by user alice"))
        d.feed("MAIL FROM:<>\r\n")
        #expect(d.last == "250 2.1.0")
        d.feed("RSET\r\nMAIL FROM:<alice@example.test> AUTH=<>\r\n")
        #expect(d.last == "250 2.1.0") // RFC 4954 §5 parameter accepted
        d.feed("AUTH LOGIN\r\n")
        #expect(d.last == "503 5.5.1") // not in a transaction (and already authenticated)
    }

    @Test func relayRoleAuthIsOptionalAndOpensRelaying() {
        var d = driver(role: .relay)
        d.feed("EHLO c.test\r\nMAIL FROM:<x@y.test>\r\nRCPT TO:<a@far.test>\r\nRCPT TO:<a@local.test>\r\n")
        #expect(d.codes.suffix(3) == ["250 2.1.0", "554 5.7.1", "250 2.1.5"])
        d.feed("RSET\r\nAUTH PLAIN \(b64("\0alice\0correct horse"))\r\nMAIL FROM:<alice@example.test>\r\nRCPT TO:<a@far.test>\r\n")
        #expect(d.codes.suffix(4) == ["250 2.0.0", "235 2.7.0", "250 2.1.0", "250 2.1.5"])
    }

    @Test func throttledAndUnavailable() {
        var d = driver()
        d.authOverride = .throttled
        d.feed("EHLO c.test\r\nAUTH PLAIN \(b64("\0alice\0correct horse"))\r\n")
        #expect(d.last == "454 4.7.0")
        d.authOverride = .unavailable
        d.feed("AUTH PLAIN \(b64("\0alice\0correct horse"))\r\n")
        #expect(d.last == "454 4.7.0")
        #expect(d.session.identity == nil)
    }

    @Test func pipelinedCommandsWaitForTheAuthenticator() {
        // Nothing after the AUTH line is decoded before the outcome is in.
        var s = SMTPServerSession(config: Driver.config { $0.role = .submission; $0.authEnabled = true },
                                  client: ClientInfo(address: IPAddress("192.0.2.1"), addressText: "192.0.2.1", trusted: false))
        s.tlsEstablished("TLSv1.3")
        _ = s.receive(.line(ByteBuffer(string: "EHLO c.test"), .crlf))
        guard case .authenticate(let c, .plain)? = s.receive(.line(ByteBuffer(string: "AUTH PLAIN \(b64("\0alice\0pw"))"), .crlf)) else {
            Issue.record("expected authenticate"); return
        }
        #expect(c.username == "alice")
        #expect(s.receive(.line(ByteBuffer(string: "MAIL FROM:<alice@example.test>"), .crlf)) == nil)
        #expect(s.state == .authenticating)
        guard case .reply(let r, false) = s.authFinished(.success(AuthIdentity(name: "alice", allowedSenders: ["alice@example.test"]))) else {
            Issue.record("reply"); return
        }
        #expect(r.first?.code == 235)
    }

    @Test func startTLSForgetsAPlaintextLogin() {
        var d = driver(tls: false, plaintext: true, address: "127.0.0.1")
        d.feed("EHLO c.test\r\nAUTH PLAIN \(b64("\0alice\0correct horse"))\r\n")
        #expect(d.session.identity?.name == "alice")
        d.feed("STARTTLS\r\n") // the driver completes the handshake at once
        #expect(d.session.identity == nil)
        d.feed("EHLO c.test\r\nMAIL FROM:<alice@example.test>\r\n")
        #expect(d.last == "530 5.7.0")
    }
}
