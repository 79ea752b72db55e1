// SMTP replies as values (never (code, text) tuples), and the one table of RFC 3463
// enhanced status codes that every part of Tern uses.
// Called by the session machine, the listener and (later) the delivery client.

import NIOCore

/// An RFC 3463 enhanced status code, `class.subject.detail`.
public struct EnhancedStatus: Sendable, Hashable, CustomStringConvertible {
    public var klass: Int
    public var subject: Int
    public var detail: Int

    public init(_ klass: Int, _ subject: Int, _ detail: Int) {
        self.klass = klass
        self.subject = subject
        self.detail = detail
    }

    /// Parses `"4.5.3"`; nil when the text is not an enhanced status code.
    public init?(parsing text: Substring) {
        let s = String(text)
        guard let (e, rest) = EnhancedStatus.prefix(of: s), rest == s.endIndex, s.utf8.last != UInt8(ascii: " ") else { return nil }
        self = e
    }

    /// The code that starts `text` when a space or the end follows it, and
    /// where the rest begins (past that one space). Digits only: RFC 3463
    /// has no signs, which `Int(_:)` would take.
    public static func prefix(of text: String) -> (EnhancedStatus, String.Index)? {
        let u = text.utf8
        var i = u.startIndex
        func number() -> Int? {
            var n = 0, digits = 0
            while i < u.endIndex, digits < 9 {
                let d = u[i] &- 48
                guard d <= 9 else { break }
                n = n * 10 + Int(d)
                digits += 1
                u.formIndex(after: &i)
            }
            return digits == 0 ? nil : n
        }
        func dot() -> Bool {
            guard i < u.endIndex, u[i] == UInt8(ascii: ".") else { return false }
            u.formIndex(after: &i)
            return true
        }
        guard let k = number(), k == 2 || k == 4 || k == 5, dot(),
              let s = number(), s <= 999, dot(),
              let d = number(), d <= 999 else { return nil }
        if i == u.endIndex { return (EnhancedStatus(k, s, d), i) }
        guard u[i] == UInt8(ascii: " ") else { return nil }
        return (EnhancedStatus(k, s, d), u.index(after: i))
    }

    public var description: String { "\(klass).\(subject).\(detail)" }

    /// The permanent codes that say an address cannot exist (5.1.1 bad
    /// mailbox, 5.1.2 bad system, 5.1.10 null MX): a bounce with one of them
    /// puts the address on the suppression list, and the statistics count
    /// it as a suppression candidate at once.
    public static let nonexistentAddress: [EnhancedStatus] = [.badDestinationMailbox, .badDestinationSystem, .nullMX]

    /// The same subject and detail in another class (2, 4 or 5).
    public func withClass(_ k: Int) -> EnhancedStatus { EnhancedStatus(k, subject, detail) }
}

/// The codes Tern uses, named after RFC 3463 / RFC 5248 registry entries.
extension EnhancedStatus {
    public static let ok = EnhancedStatus(2, 0, 0)                       // other or undefined status
    public static let senderOK = EnhancedStatus(2, 1, 0)                 // other address status
    public static let destinationOK = EnhancedStatus(2, 1, 5)            // destination address valid
    public static let cannotVerify = EnhancedStatus(2, 5, 0)             // VRFY: will attempt delivery
    public static let badDestinationMailbox = EnhancedStatus(5, 1, 1)    // bad destination mailbox address
    public static let badDestinationSystem = EnhancedStatus(5, 1, 2)     // bad destination system address
    public static let badDestinationSyntax = EnhancedStatus(5, 1, 3)     // bad destination mailbox address syntax
    public static let badSenderSyntax = EnhancedStatus(5, 1, 7)          // bad sender's mailbox address syntax
    public static let nullMX = EnhancedStatus(5, 1, 10)                  // RFC 7505 recipient address has null MX
    public static let mailSystemFull = EnhancedStatus(4, 3, 1)           // mail system full
    public static let systemNotAccepting = EnhancedStatus(4, 3, 2)       // system not accepting network messages
    public static let messageTooBig = EnhancedStatus(5, 3, 4)            // message too big for system
    public static let systemError = EnhancedStatus(4, 3, 0)              // other or undefined mail system status
    public static let routingError = EnhancedStatus(4, 4, 0)             // other or undefined network or routing status
    public static let noAnswerFromHost = EnhancedStatus(4, 4, 1)         // no answer from host (connect, greeting, EHLO failed)
    public static let directoryFailure = EnhancedStatus(4, 4, 3)         // directory server failure (DNS)
    public static let unableToRoute = EnhancedStatus(4, 4, 4)            // unable to route
    public static let protocolError = EnhancedStatus(4, 5, 0)            // other or undefined protocol status
    public static let cryptographicFailure = EnhancedStatus(4, 7, 5)     // cryptographic failure (TLS handshake)
    public static let encryptionNeeded = EnhancedStatus(4, 7, 10)        // RFC 5248: encryption needed (TLS policy)
    public static let otherPermanent = EnhancedStatus(5, 0, 0)           // other undefined status (an operator's bounce)
    public static let routingLoop = EnhancedStatus(5, 4, 6)              // routing loop detected
    public static let connectionDropped = EnhancedStatus(4, 4, 2)        // bad connection
    public static let deliveryTimeExpired = EnhancedStatus(4, 4, 7)      // delivery time expired
    public static let invalidCommand = EnhancedStatus(5, 5, 1)           // invalid command
    public static let syntaxError = EnhancedStatus(5, 5, 2)              // syntax error
    public static let tooManyRecipients = EnhancedStatus(4, 5, 3)        // too many recipients
    public static let invalidArguments = EnhancedStatus(5, 5, 4)         // invalid command arguments
    public static let contentError = EnhancedStatus(5, 6, 0)             // other or undefined media error
    public static let nonASCIINotPermitted = EnhancedStatus(5, 6, 7)     // RFC 6531 non-ASCII addresses not permitted
    public static let securityPolicy = EnhancedStatus(5, 7, 1)           // delivery not authorized, message refused
    public static let tempSecurity = EnhancedStatus(4, 7, 0)             // other or undefined security status
    public static let authSucceeded = EnhancedStatus(2, 7, 0)           // RFC 4954 §6: authentication succeeded
    public static let securityError = EnhancedStatus(5, 7, 0)           // RFC 4954 §6: authentication required / aborted
    public static let badCredentials = EnhancedStatus(5, 7, 8)          // RFC 4954 §6: authentication credentials invalid
    public static let encryptionRequired = EnhancedStatus(5, 7, 11)     // RFC 5248: encryption required for mechanism
    public static let spfFailed = EnhancedStatus(5, 7, 23)              // RFC 7372: SPF validation failed
}

/// One SMTP reply: a three-digit code, an optional enhanced code, and text lines.
public struct SMTPReply: Sendable, Hashable, CustomStringConvertible {
    public var code: Int
    public var enhanced: EnhancedStatus?
    public var lines: [String]

    public init(_ code: Int, _ enhanced: EnhancedStatus?, _ text: String) {
        self.code = code
        self.enhanced = enhanced
        self.lines = [SMTPReply.capped(text)]
    }

    public init(_ code: Int, _ enhanced: EnhancedStatus?, lines: [String]) {
        precondition(!lines.isEmpty)
        self.code = code
        self.enhanced = enhanced
        self.lines = lines.map(SMTPReply.capped)
    }

    /// Octets of text a reply line may carry: RFC 5321 §4.5.3.1.5 allows
    /// 512 octets a reply line, code, enhanced code and CRLF included. A
    /// reply that echoes what a client sent (a 1,000-octet address, an
    /// unknown parameter) is cut to fit, ending in "...". (Found by the
    /// session fuzz target.)
    public static let maxLineText = 490

    static func capped(_ line: String) -> String {
        guard line.utf8.count > maxLineText else { return line }
        return line.prefix(utf8Octets: maxLineText - 3) + "..."
    }

    public var isPositive: Bool { code < 400 }
    public var isTransient: Bool { (400..<500).contains(code) }
    public var isPermanent: Bool { code >= 500 }

    /// The wire form, every line ending in CRLF (RFC 5321 §4.2.1): `code-text`
    /// on all lines but the last, `code text` on the last.
    public var wireText: String {
        var out = ByteBuffer()
        writeWire(to: &out)
        return String(buffer: out)
    }

    /// Writes the wire form into `out` without building the text first
    /// (four replies go out per message).
    public func writeWire(to out: inout ByteBuffer) {
        for (i, line) in lines.enumerated() {
            SMTPReply.writeDecimal(code, to: &out)
            out.writeInteger(i == lines.count - 1 ? UInt8(ascii: " ") : UInt8(ascii: "-"))
            if let e = enhanced {
                SMTPReply.writeDecimal(e.klass, to: &out)
                out.writeInteger(UInt8(ascii: "."))
                SMTPReply.writeDecimal(e.subject, to: &out)
                out.writeInteger(UInt8(ascii: "."))
                SMTPReply.writeDecimal(e.detail, to: &out)
                out.writeInteger(UInt8(ascii: " "))
            }
            out.writeString(line)
            out.writeInteger(UInt16(0x0D0A)) // CRLF, big-endian
        }
    }

    static func writeDecimal(_ v: Int, to out: inout ByteBuffer) {
        guard v >= 0 && v <= 999 else {
            out.writeString(String(v))
            return
        }
        if v >= 100 { out.writeInteger(UInt8(truncatingIfNeeded: 48 + v / 100)) }
        if v >= 10 { out.writeInteger(UInt8(truncatingIfNeeded: 48 + v / 10 % 10)) }
        out.writeInteger(UInt8(truncatingIfNeeded: 48 + v % 10))
    }

    public var description: String {
        let e = enhanced.map { $0.description + " " } ?? ""
        return "\(code) \(e)\(lines.joined(separator: " / "))"
    }

    /// The text of all lines, joined by a space (for storage in the database).
    public var text: String { lines.joined(separator: " ") }
}

extension String {
    /// The longest prefix of at most `n` UTF-8 octets that ends on a scalar
    /// boundary (one pass; reply texts are cut with it).
    public func prefix(utf8Octets n: Int) -> String {
        var octets = 0
        var end = unicodeScalars.startIndex
        for i in unicodeScalars.indices {
            let width = UTF8.width(unicodeScalars[i])
            if octets + width > n { break }
            octets += width
            end = unicodeScalars.index(after: i)
        }
        return String(unicodeScalars[..<end])
    }

    /// The text with control characters (C0, DEL, C1) written as `\xNN`,
    /// for anything from the network that reaches a log line, a terminal
    /// or a stored reason: a remote server's reply, an AUTH user name.
    /// `keepingNewlines` leaves LF alone (multi-line CLI output).
    public func escapingControlCharacters(keepingNewlines: Bool = false) -> String {
        func isControl(_ v: UInt32) -> Bool { v < 0x20 || (v >= 0x7F && v <= 0x9F) }
        guard unicodeScalars.contains(where: { isControl($0.value) && !(keepingNewlines && $0.value == 10) }) else { return self }
        var out = ""
        out.reserveCapacity(utf8.count + 8)
        let hex = Array("0123456789ABCDEF")
        for u in unicodeScalars {
            if isControl(u.value) && !(keepingNewlines && u.value == 10) {
                out += "\\x"
                out.append(hex[Int(u.value >> 4)])
                out.append(hex[Int(u.value & 0xF)])
            } else {
                out.unicodeScalars.append(u)
            }
        }
        return out
    }
}
