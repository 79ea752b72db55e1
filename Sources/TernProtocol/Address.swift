// RFC 5321 §4.1.2 paths and mailboxes, with the RFC 6531 (SMTPUTF8)
// extensions, parsed strictly into values. Source routes are parsed and
// ignored (RFC 5321 §3.6.1, Appendix C). Called by the command parser.

/// A mailbox `local-part@domain` as received, plus its normalised domain.
public struct Mailbox: Sendable, Hashable, CustomStringConvertible {
    /// The local part exactly as sent (with quotes when it was a quoted string).
    public let localPart: String
    /// The domain or address literal exactly as sent.
    public let domain: String
    /// True when the domain is an address literal such as `[192.0.2.1]`.
    public let isAddressLiteral: Bool
    /// True when the local part was a quoted string.
    public let isQuoted: Bool

    public init(localPart: String, domain: String, isAddressLiteral: Bool = false, isQuoted: Bool = false) {
        self.localPart = localPart
        self.domain = domain
        self.isAddressLiteral = isAddressLiteral
        self.isQuoted = isQuoted
    }

    /// `local@domain` as sent.
    public var address: String { "\(localPart)@\(domain)" }
    public var description: String { address }

    /// The local part with quoting removed (`"a b"` → `a b`).
    public var unquotedLocalPart: String {
        guard isQuoted else { return localPart }
        var out = ""
        var escaped = false
        for ch in localPart.dropFirst().dropLast() {
            if escaped { out.append(ch); escaped = false } else if ch == "\\" { escaped = true } else { out.append(ch) }
        }
        return out
    }

    /// Lower-case IDNA A-label domain, or the lower-case literal; the key for
    /// routing and for the `recipient.domain` column.
    public var normalizedDomain: String {
        if isAddressLiteral { return domain.lowercased() }
        return IDNA.toASCII(domain) ?? domain.lowercased()
    }

    /// The one form in which addresses are compared (suppression, recipient
    /// tables): the local part as written, the domain as a lower-case A-label.
    /// `Jörg@Bücher.TEST` and `Jörg@xn--bcher-kva.test` are the same key.
    public var canonical: String { localPart + "@" + normalizedDomain }

    /// True when any part of the address is non-ASCII (needs SMTPUTF8).
    public var needsSMTPUTF8: Bool { !address.unicodeScalars.allSatisfy(\.isASCII) }
}

extension AddressParser {
    /// `Mailbox.canonical` of an address text; nil when it is no address.
    public static func canonical(_ text: some StringProtocol) -> String? {
        guard case .success(let m) = parseMailbox(Substring(text), allowUTF8: true) else { return nil }
        return m.canonical
    }
}

/// Why an address failed to parse.
public enum AddressError: Error, Sendable, Equatable {
    case syntax(String)
    case tooLong(String)
    case nonASCII
}

/// The parsed argument of MAIL FROM / RCPT TO.
public enum SMTPPath: Sendable, Hashable {
    case null                  // "<>"
    case postmaster            // RCPT TO:<Postmaster> (RFC 5321 §4.1.1.3)
    case mailbox(Mailbox)
}

public enum AddressParser {
    // RFC 5321 §4.5.3.1: local part 64, domain 255, path 256 octets.
    public static let maxLocalPart = 64
    public static let maxDomain = 255
    public static let maxPath = 256

    /// Parses a path including its angle brackets. With `allowUTF8` false, any
    /// non-ASCII octet is `.nonASCII` (RFC 6531 §3.4: UTF-8 only after SMTPUTF8).
    public static func parsePath(_ text: Substring, allowUTF8: Bool, allowNull: Bool, allowPostmaster: Bool) -> Result<SMTPPath, AddressError> {
        guard text.first == "<", text.last == ">", text.count >= 2 else {
            return .failure(.syntax("address must be enclosed in <>"))
        }
        if text.utf8.count > maxPath { return .failure(.tooLong("path longer than \(maxPath) octets")) }
        if !allowUTF8 && !text.unicodeScalars.allSatisfy(\.isASCII) { return .failure(.nonASCII) }
        var inner = text.dropFirst().dropLast()
        if inner.isEmpty {
            return allowNull ? .success(.null) : .failure(.syntax("empty address not allowed here"))
        }
        if allowPostmaster && inner.lowercased() == "postmaster" { return .success(.postmaster) }
        // A-d-l ":" — a source route; parsed for syntax, then ignored.
        if inner.first == "@" {
            guard let colon = inner.firstIndex(of: ":") else { return .failure(.syntax("bad source route")) }
            let route = inner[..<colon]
            for hop in route.split(separator: ",", omittingEmptySubsequences: false) {
                guard hop.first == "@", isDomain(hop.dropFirst(), allowUTF8: allowUTF8) else {
                    return .failure(.syntax("bad source route"))
                }
            }
            inner = inner[inner.index(after: colon)...]
        }
        return parseMailbox(inner, allowUTF8: allowUTF8).map { .mailbox($0) }
    }

    /// Parses `local-part@domain` (no brackets).
    public static func parseMailbox(_ text: Substring, allowUTF8: Bool) -> Result<Mailbox, AddressError> {
        guard !text.isEmpty else { return .failure(.syntax("empty address")) }
        var localEnd: Substring.Index
        var quoted = false
        if text.first == "\"" {
            // Quoted-string: qtextSMTP / quoted-pairSMTP up to the closing quote.
            quoted = true
            var i = text.index(after: text.startIndex)
            var closed = false
            while i < text.endIndex {
                let s = text[i].unicodeScalars.first!
                if s == "\\" {
                    i = text.index(after: i)
                    guard i < text.endIndex, let q = text[i].unicodeScalars.first, q.value >= 32 && q.value <= 126 else {
                        return .failure(.syntax("bad quoted pair"))
                    }
                } else if s == "\"" {
                    closed = true
                    break
                } else if !(isQText(s) || (allowUTF8 && !s.isASCII)) {
                    return .failure(.syntax("bad character in quoted local part"))
                }
                i = text.index(after: i)
            }
            guard closed else { return .failure(.syntax("unterminated quoted local part")) }
            localEnd = text.index(after: i)
            guard localEnd < text.endIndex, text[localEnd] == "@" else { return .failure(.syntax("missing @domain")) }
        } else {
            guard let at = text.lastIndex(of: "@") else { return .failure(.syntax("missing @domain")) }
            localEnd = at
            let local = text[..<at]
            guard isDotString(local, allowUTF8: allowUTF8) else { return .failure(.syntax("bad local part")) }
        }
        let local = text[..<localEnd]
        let domain = text[text.index(after: localEnd)...]
        if local.utf8.count > maxLocalPart { return .failure(.tooLong("local part longer than \(maxLocalPart) octets")) }
        if domain.utf8.count > maxDomain { return .failure(.tooLong("domain longer than \(maxDomain) octets")) }
        if domain.first == "[" {
            guard domain.last == "]", isAddressLiteral(domain.dropFirst().dropLast()) else {
                return .failure(.syntax("bad address literal"))
            }
            return .success(Mailbox(localPart: String(local), domain: String(domain), isAddressLiteral: true, isQuoted: quoted))
        }
        guard isDomain(domain, allowUTF8: allowUTF8) else { return .failure(.syntax("bad domain")) }
        return .success(Mailbox(localPart: String(local), domain: String(domain), isQuoted: quoted))
    }

    // atext (RFC 5322 §3.2.3), plus UTF8-non-ascii with SMTPUTF8 (RFC 6531 §3.3).
    static func isAText(_ s: Unicode.Scalar, allowUTF8: Bool) -> Bool {
        if !s.isASCII { return allowUTF8 }
        switch s {
        case "a"..."z", "A"..."Z", "0"..."9": return true
        default: return "!#$%&'*+-/=?^_`{|}~".unicodeScalars.contains(s)
        }
    }

    // qtextSMTP = %d32-33 / %d35-91 / %d93-126
    static func isQText(_ s: Unicode.Scalar) -> Bool {
        let v = s.value
        return v == 32 || v == 33 || (35...91).contains(v) || (93...126).contains(v)
    }

    static func isDotString(_ s: Substring, allowUTF8: Bool) -> Bool {
        // ASCII (nearly every address): one pass over the bytes.
        if let ascii = asciiDotString(s) { return ascii }
        return scalarDotString(s, allowUTF8: allowUTF8)
    }

    /// `isDotString` scalar by scalar, for any text.
    static func scalarDotString(_ s: Substring, allowUTF8: Bool) -> Bool {
        let atoms = s.split(separator: ".", omittingEmptySubsequences: false)
        return !atoms.isEmpty && atoms.allSatisfy { atom in
            !atom.isEmpty && atom.unicodeScalars.allSatisfy { isAText($0, allowUTF8: allowUTF8) }
        }
    }

    /// Domain = sub-domain *("." sub-domain); sub-domain = Let-dig [Ldh-str]
    /// (or a U-label with SMTPUTF8). No trailing dot.
    public static func isDomain(_ s: Substring, allowUTF8: Bool) -> Bool {
        guard !s.isEmpty, s.utf8.count <= maxDomain else { return false }
        if let ascii = asciiDomain(s) { return ascii }
        return scalarDomain(s, allowUTF8: allowUTF8)
    }

    /// `isDomain` scalar by scalar, for any text (U-labels too).
    static func scalarDomain(_ s: Substring, allowUTF8: Bool) -> Bool {
        guard !s.isEmpty, s.utf8.count <= maxDomain else { return false }
        let labels = s.split(separator: ".", omittingEmptySubsequences: false)
        for label in labels {
            let scalars = Array(label.unicodeScalars)
            guard !scalars.isEmpty, label.utf8.count <= 63 else { return false }
            if scalars.contains(where: { !$0.isASCII }) {
                guard allowUTF8 else { return false }
                // U-label: letters/digits/hyphen or non-ASCII, not starting or ending with '-'.
                guard scalars.first != "-", scalars.last != "-",
                      scalars.allSatisfy({ !$0.isASCII || isLetDig($0) || $0 == "-" }) else { return false }
                continue
            }
            guard isLetDig(scalars.first!), isLetDig(scalars.last!),
                  scalars.allSatisfy({ isLetDig($0) || $0 == "-" }) else { return false }
        }
        return true
    }

    /// `isDotString` for ASCII text; nil when `s` has a non-ASCII byte.
    static func asciiDotString(_ s: Substring) -> Bool? {
        var atomLength = 0, valid = true
        for b in s.utf8 {
            if b >= 0x80 { return nil }
            if b == UInt8(ascii: ".") {
                if atomLength == 0 { valid = false }
                atomLength = 0
            } else {
                if !asciiAText(b) { valid = false }
                atomLength += 1
            }
        }
        return valid && atomLength > 0
    }

    static func asciiAText(_ b: UInt8) -> Bool {
        switch b {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"): return true
        case UInt8(ascii: "!"), UInt8(ascii: "#"), UInt8(ascii: "$"), UInt8(ascii: "%"), UInt8(ascii: "&"), UInt8(ascii: "'"),
             UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "/"), UInt8(ascii: "="), UInt8(ascii: "?"),
             UInt8(ascii: "^"), UInt8(ascii: "_"), UInt8(ascii: "`"), UInt8(ascii: "{"), UInt8(ascii: "|"), UInt8(ascii: "}"),
             UInt8(ascii: "~"): return true
        default: return false
        }
    }

    /// `isDomain` for ASCII text: labels of 1 to 63 letters, digits and
    /// hyphens, a letter or digit at each end. Nil when `s` has a non-ASCII byte.
    static func asciiDomain(_ s: Substring) -> Bool? {
        var length = 0, valid = true
        var last: UInt8 = 0
        func letDig(_ b: UInt8) -> Bool {
            (b >= UInt8(ascii: "a") && b <= UInt8(ascii: "z")) || (b >= UInt8(ascii: "A") && b <= UInt8(ascii: "Z"))
                || (b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9"))
        }
        for b in s.utf8 {
            if b >= 0x80 { return nil }
            if b == UInt8(ascii: ".") {
                if length == 0 || !letDig(last) { valid = false }
                length = 0
            } else {
                if length == 0 && !letDig(b) { valid = false }
                if !letDig(b) && b != UInt8(ascii: "-") { valid = false }
                length += 1
                if length > 63 { valid = false }
            }
            last = b
        }
        return valid && length > 0 && letDig(last)
    }

    static func isLetDig(_ s: Unicode.Scalar) -> Bool {
        switch s {
        case "a"..."z", "A"..."Z", "0"..."9": return true
        default: return false
        }
    }

    /// IPv4-address-literal / "IPv6:" IPv6-addr / General-address-literal.
    static func isAddressLiteral(_ s: Substring) -> Bool {
        if s.lowercased().hasPrefix("ipv6:") {
            let v6 = s.dropFirst(5)
            return IPAddress.parseIPv6(v6) != nil
        }
        if IPAddress.parseIPv4(s) != nil { return true }
        // General-address-literal = Standardized-tag ":" 1*dcontent
        guard let colon = s.firstIndex(of: ":") else { return false }
        let tag = s[..<colon], content = s[s.index(after: colon)...]
        return !tag.isEmpty && tag.unicodeScalars.allSatisfy({ isLetDig($0) || $0 == "-" })
            && !content.isEmpty && content.unicodeScalars.allSatisfy({ $0.value >= 33 && $0.value <= 126 && $0 != "[" && $0 != "]" && $0 != "\\" })
    }
}
