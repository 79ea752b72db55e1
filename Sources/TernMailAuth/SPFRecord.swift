// SPF records (RFC 7208 §4.5, §4.6, §5, §6, §7): selecting the record among
// a name's TXT records, parsing its terms (the whole record before any is
// evaluated: a syntax error anywhere is a permerror), and the macro language.

import TernProtocol

public enum SPFResult: String, Sendable, CaseIterable, Codable {
    case none, neutral, pass, fail, softfail, temperror, permerror
}

enum SPFQualifier: Character, Sendable {
    case pass = "+", fail = "-", softfail = "~", neutral = "?"

    var result: SPFResult {
        switch self {
        case .pass: .pass
        case .fail: .fail
        case .softfail: .softfail
        case .neutral: .neutral
        }
    }
}

enum SPFMechanism: Equatable, Sendable {
    case all
    case include(MacroString)
    case a(MacroString?, v4: Int, v6: Int)
    case mx(MacroString?, v4: Int, v6: Int)
    case ptr(MacroString?)
    case ip(IPNetwork)
    case exists(MacroString)

    /// Terms that query DNS count toward the limit of 10 (§4.6.4).
    var queriesDNS: Bool {
        switch self {
        case .all, .ip: false
        default: true
        }
    }
}

struct SPFDirective: Equatable, Sendable {
    var qualifier: SPFQualifier
    var mechanism: SPFMechanism
    var text: String
}

public struct SPFRecord: Equatable, Sendable {
    var directives: [SPFDirective] = []
    var redirect: MacroString?
    var exp: MacroString?

    /// The terms as written (mechanisms only), for tests and fuzzing.
    public var mechanismTexts: [String] { directives.map(\.text) }
    public var hasRedirect: Bool { redirect != nil }
}

public struct SPFSyntaxError: Error, Equatable {
    public var reason: String
}

/// A macro-string (§7.1), parsed.
struct MacroString: Equatable, Sendable {
    enum Part: Equatable, Sendable {
        case literal(String)
        /// letter (lower-case), whether to URL-escape (upper-case letter), rightmost N parts (0 = all), reverse, delimiters.
        case macro(letter: Character, escape: Bool, keep: Int, reverse: Bool, delimiters: [Character])
    }

    var parts: [Part]

    var usesP: Bool {
        parts.contains { if case .macro("p", _, _, _, _) = $0 { true } else { false } }
    }

    var usesExplanationOnlyLetters: Bool {
        parts.contains { if case .macro(let l, _, _, _, _) = $0 { "crt".contains(l) } else { false } }
    }

    /// - Parameter explanation: an explain-string (§6.2): spaces allowed.
    static func parse(_ s: Substring, explanation: Bool = false) throws(SPFSyntaxError) -> MacroString {
        var parts: [Part] = []
        var literal = ""
        var i = s.startIndex
        func flush() {
            if !literal.isEmpty { parts.append(.literal(literal)) }
            literal = ""
        }
        while i < s.endIndex {
            let c = s[i]
            guard let v = c.asciiValue else { throw SPFSyntaxError(reason: "non-ASCII character in \(s)") }
            if c == "%" {
                let n = s.index(after: i)
                guard n < s.endIndex else { throw SPFSyntaxError(reason: "a lone % at the end of \(s)") }
                switch s[n] {
                case "%": literal.append("%"); i = s.index(after: n); continue
                case "_": literal.append(" "); i = s.index(after: n); continue
                case "-": literal.append("%20"); i = s.index(after: n); continue
                case "{": break
                default: throw SPFSyntaxError(reason: "bad macro %\(s[n]) in \(s)")
                }
                guard let close = s[n...].firstIndex(of: "}") else { throw SPFSyntaxError(reason: "unclosed macro in \(s)") }
                let body = s[s.index(after: n)..<close]
                guard let letter = body.first, "slodiphcrtv".contains(letter.lowercased()) else {
                    throw SPFSyntaxError(reason: "unknown macro letter in %{\(body)}")
                }
                var j = body.index(after: body.startIndex)
                var digits = ""
                while j < body.endIndex, body[j].isASCII, body[j].isNumber { digits.append(body[j]); j = body.index(after: j) }
                var reverse = false
                if j < body.endIndex, body[j] == "r" || body[j] == "R" { reverse = true; j = body.index(after: j) }
                var delimiters: [Character] = []
                while j < body.endIndex {
                    guard ".-+,/_=".contains(body[j]) else { throw SPFSyntaxError(reason: "bad delimiter in %{\(body)}") }
                    delimiters.append(body[j])
                    j = body.index(after: j)
                }
                var keep = 0
                if !digits.isEmpty {
                    guard let k = Int(digits.prefix(4)), k >= 1 else { throw SPFSyntaxError(reason: "zero parts in %{\(body)}") }
                    keep = k
                }
                flush()
                parts.append(.macro(letter: Character(letter.lowercased()), escape: letter.isUppercase, keep: keep, reverse: reverse,
                                    delimiters: delimiters.isEmpty ? ["."] : delimiters))
                i = s.index(after: close)
                continue
            }
            guard (0x21...0x7E).contains(v) || (explanation && v == 0x20) else {
                throw SPFSyntaxError(reason: "character \(v) not allowed in \(s)")
            }
            literal.append(c)
            i = s.index(after: i)
        }
        flush()
        return MacroString(parts: parts)
    }

    /// A domain-spec (§7.1): a macro-string whose end is a macro or "." toplabel ["."].
    static func domainSpec(_ s: Substring) throws(SPFSyntaxError) -> MacroString {
        guard !s.isEmpty else { throw SPFSyntaxError(reason: "empty domain-spec") }
        let m = try parse(s)
        guard !m.usesExplanationOnlyLetters else { throw SPFSyntaxError(reason: "%{c}, %{r} and %{t} belong in explanations only: \(s)") }
        if case .macro = m.parts.last { return m }
        var text = s
        if text.hasSuffix(".") { text = text.dropLast() }
        // The last label must be a toplabel: alphanumerics with a letter, or with an inner hyphen; the name needs a dot.
        guard let dot = text.lastIndex(of: ".") else { throw SPFSyntaxError(reason: "\(s) is not a domain name") }
        let top = text[text.index(after: dot)...]
        if case .macro = m.parts.dropLast().last, top.isEmpty { return m }
        let alnum = top.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-") }
        guard alnum, !top.isEmpty, top.first != "-", top.last != "-", top.contains(where: { $0.isLetter || $0 == "-" }) else {
            throw SPFSyntaxError(reason: "\(s) does not end in a top-level label")
        }
        return m
    }
}

extension SPFRecord {
    /// Whether a TXT record is an SPF version 1 record (§4.5): "v=spf1" then a space or the end.
    public static func isSPF(_ bytes: [UInt8]) -> Bool {
        let tag = Array("v=spf1".utf8)
        guard bytes.count >= tag.count else { return false }
        for (a, b) in zip(bytes, tag) where a | 0x20 != b | 0x20 { return false }
        return bytes.count == tag.count || bytes[tag.count] == 0x20
    }

    /// Parses a whole record; any syntax error is returned before anything is evaluated (§4.6).
    public static func parse(_ bytes: [UInt8]) throws(SPFSyntaxError) -> SPFRecord {
        guard bytes.allSatisfy({ $0 < 0x80 }) else { throw SPFSyntaxError(reason: "non-ASCII text in the record") }
        let text = String(decoding: bytes, as: UTF8.self)
        var record = SPFRecord()
        for term in text.split(separator: " ").dropFirst() {
            if let eq = term.firstIndex(of: "="), isModifierName(term[..<eq]) {
                let name = term[..<eq].lowercased()
                let value = term[term.index(after: eq)...]
                switch name {
                case "redirect":
                    guard record.redirect == nil else { throw SPFSyntaxError(reason: "two redirect= modifiers") }
                    record.redirect = try MacroString.domainSpec(value)
                case "exp":
                    guard record.exp == nil else { throw SPFSyntaxError(reason: "two exp= modifiers") }
                    record.exp = try MacroString.domainSpec(value)
                default:
                    _ = try MacroString.parse(value) // unknown modifiers are ignored, but must be well-formed
                }
                continue
            }
            record.directives.append(try directive(term))
        }
        return record
    }

    static func isModifierName(_ s: Substring) -> Bool {
        guard let first = s.first, first.isASCII, first.isLetter else { return false }
        return s.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) }
    }

    static func directive(_ term: Substring) throws(SPFSyntaxError) -> SPFDirective {
        var rest = term
        var qualifier = SPFQualifier.pass
        if let f = rest.first, let q = SPFQualifier(rawValue: f) {
            qualifier = q
            rest = rest.dropFirst()
        }
        let nameEnd = rest.firstIndex { $0 == ":" || $0 == "/" } ?? rest.endIndex
        let name = rest[..<nameEnd].lowercased()
        let arg = rest[nameEnd...]
        let value: Substring? = arg.first == ":" ? arg.dropFirst() : nil
        let mechanism: SPFMechanism
        switch name {
        case "all":
            guard arg.isEmpty else { throw SPFSyntaxError(reason: "all takes no argument: \(term)") }
            mechanism = .all
        case "include", "exists":
            guard let v = value, arg.first == ":" else { throw SPFSyntaxError(reason: "\(name) needs a domain: \(term)") }
            let spec = try MacroString.domainSpec(v)
            mechanism = name == "include" ? .include(spec) : .exists(spec)
        case "a", "mx":
            let (spec, v4, v6) = try domainAndCIDR(arg, term: term)
            mechanism = name == "a" ? .a(spec, v4: v4, v6: v6) : .mx(spec, v4: v4, v6: v6)
        case "ptr":
            if arg.isEmpty { mechanism = .ptr(nil); break }
            guard let v = value else { throw SPFSyntaxError(reason: "bad ptr: \(term)") }
            mechanism = .ptr(try MacroString.domainSpec(v))
        case "ip4", "ip6":
            guard let v = value else { throw SPFSyntaxError(reason: "\(name) needs an address: \(term)") }
            mechanism = .ip(try network(v, v4: name == "ip4", term: term))
        default:
            throw SPFSyntaxError(reason: "unknown mechanism \(term)")
        }
        return SPFDirective(qualifier: qualifier, mechanism: mechanism, text: String(term))
    }

    /// "/N" with no leading zero, at most `max`.
    static func cidr(_ s: Substring, max: Int) -> Int? {
        guard !s.isEmpty, s.count <= 3, s.allSatisfy({ $0.isASCII && $0.isNumber }), s == "0" || s.first != "0", let n = Int(s), n <= max else {
            return nil
        }
        return n
    }

    /// `[:domain-spec][/cidr4][//cidr6]` after "a" or "mx".
    static func domainAndCIDR(_ arg: Substring, term: Substring) throws(SPFSyntaxError) -> (MacroString?, Int, Int) {
        var rest = arg
        var v4 = 32, v6 = 128
        // The dual CIDR is read from the end: a domain-spec may itself contain "/".
        if let r = rest.range(of: "//", options: .backwards), let n = cidr(rest[r.upperBound...], max: 128) {
            v6 = n
            rest = rest[..<r.lowerBound]
        } else if let r = rest.range(of: "//", options: .backwards), rest[r.upperBound...].allSatisfy({ $0.isNumber }) {
            throw SPFSyntaxError(reason: "bad IPv6 prefix in \(term)")
        }
        if let slash = rest.lastIndex(of: "/"), rest[rest.index(after: slash)...].allSatisfy({ $0.isASCII && $0.isNumber }) {
            guard let n = cidr(rest[rest.index(after: slash)...], max: 32) else { throw SPFSyntaxError(reason: "bad IPv4 prefix in \(term)") }
            v4 = n
            rest = rest[..<slash]
        }
        if rest.isEmpty { return (nil, v4, v6) }
        guard rest.first == ":" else { throw SPFSyntaxError(reason: "bad mechanism \(term)") }
        return (try MacroString.domainSpec(rest.dropFirst()), v4, v6)
    }

    static func network(_ v: Substring, v4: Bool, term: Substring) throws(SPFSyntaxError) -> IPNetwork {
        var address = v
        var length = v4 ? 32 : 128
        if let slash = v.firstIndex(of: "/") {
            guard let n = cidr(v[v.index(after: slash)...], max: length) else { throw SPFSyntaxError(reason: "bad prefix in \(term)") }
            length = n
            address = v[..<slash]
        }
        // ip4 takes a dotted quad only; ip6 an IPv6 address (which may end in a dotted quad).
        guard let ip = IPAddress(address), ip.isIPv4 == v4, v4 ? address.split(separator: ".", omittingEmptySubsequences: false).count == 4 : address.contains(":") else {
            throw SPFSyntaxError(reason: "bad address in \(term)")
        }
        return IPNetwork(address: ip, prefixLength: length)
    }
}
