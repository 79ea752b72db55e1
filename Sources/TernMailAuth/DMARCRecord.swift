// DMARC records (RFC 7489 §6.3) and the From: domains they apply to: pure
// code over text (the fuzz-auth target drives it).

import Foundation
import TernMessage

public enum DMARCPolicy: String, Sendable, Codable, Comparable {
    case none, quarantine, reject

    var rank: Int { self == .none ? 0 : self == .quarantine ? 1 : 2 }
    public static func < (a: DMARCPolicy, b: DMARCPolicy) -> Bool { a.rank < b.rank }

    /// The next lower policy, for messages pct= did not select (§6.6.4).
    var lower: DMARCPolicy { self == .reject ? .quarantine : .none }
}

public struct DMARCRecord: Sendable, Equatable {
    public var policy: DMARCPolicy
    public var subdomainPolicy: DMARCPolicy?
    public var percent: Int
    public var strictDKIM: Bool
    public var strictSPF: Bool

    /// A record's text; nil when it is not a DMARC record (§6.3: "v=DMARC1" first).
    public static func parse(_ text: String) -> Result<DMARCRecord, DMARCError>? {
        // Tag lists by hand: Foundation's trimming and replacing showed in the intake profile.
        func trimmed(_ s: Substring) -> Substring {
            var t = s
            while let f = t.first, f == " " || f == "\t" || f == "\r" || f == "\n" { t = t.dropFirst() }
            while let l = t.last, l == " " || l == "\t" || l == "\r" || l == "\n" { t = t.dropLast() }
            return t
        }
        let tags = text.split(separator: ";").map(trimmed).filter { !$0.isEmpty }
        guard let first = tags.first, let eq = first.firstIndex(of: "="), trimmed(first[..<eq]) == "v",
              trimmed(first[first.index(after: eq)...]) == "DMARC1" else { return nil }
        var values: [String: Substring] = [:]
        for t in tags.dropFirst() {
            guard let eq = t.firstIndex(of: "=") else { return .failure(DMARCError("bad tag \(t)")) }
            values[trimmed(t[..<eq]).lowercased()] = trimmed(t[t.index(after: eq)...])
        }
        guard let p = values["p"].flatMap({ DMARCPolicy(rawValue: $0.lowercased()) }) else {
            // §6.6.3: no valid p=, but a valid rua=: as p=none; otherwise no policy.
            if values["rua"] != nil { return .success(DMARCRecord(policy: .none, subdomainPolicy: nil, percent: 100, strictDKIM: false, strictSPF: false)) }
            return .failure(DMARCError("no valid p= tag"))
        }
        var record = DMARCRecord(policy: p, subdomainPolicy: nil, percent: 100, strictDKIM: false, strictSPF: false)
        if let sp = values["sp"] { record.subdomainPolicy = DMARCPolicy(rawValue: sp.lowercased()) }
        if let pct = values["pct"], let n = Int(pct), (0...100).contains(n) { record.percent = n }
        record.strictDKIM = values["adkim"]?.lowercased() == "s"
        record.strictSPF = values["aspf"]?.lowercased() == "s"
        return .success(record)
    }
}

/// The domains of the addresses in the message's From: fields (RFC 5322 §3.6.2; usually one).
public func fromDomains(_ message: [UInt8]) -> [String] {
    fromDomains(DKIMCanonical.split(message).fields)
}

/// The same, from header fields already split.
public func fromDomains(_ fields: [RawHeaderField]) -> [String] {
    var out: [String] = []
    for f in fields where f.lowercasedName == "from" {
        out += addressDomains(String(decoding: DKIMCanonical.value(of: f), as: UTF8.self))
    }
    return out
}

/// The domain of each mailbox in an address list: display names, quoted strings, comments and groups skipped.
public func addressDomains(_ value: String) -> [String] {
    var mailboxes: [String] = []
    var current = ""
    var depth = 0, inQuote = false, inAngle = false, escaped = false
    for c in value {
        if escaped { escaped = false; if inQuote { continue } }
        switch c {
        case "\\": escaped = true; continue
        case "\"" where depth == 0: inQuote.toggle(); continue
        case "(" where !inQuote: depth += 1; continue
        case ")" where !inQuote && depth > 0: depth -= 1; continue
        default: break
        }
        if inQuote || depth > 0 { continue }
        switch c {
        case "<": inAngle = true; current = ""
        case ">": inAngle = false; mailboxes.append(current); current = "\u{0}"
        case ",", ";" where !inAngle:
            if current != "\u{0}" { mailboxes.append(current) }
            current = ""
        case ":" where !inAngle: current = "" // a group's name
        default: if current != "\u{0}" { current.append(c) }
        }
    }
    if current != "\u{0}" { mailboxes.append(current) }
    return mailboxes.compactMap { m in
        let t = m.filter { !$0.isWhitespace }
        guard let at = t.lastIndex(of: "@") else { return nil }
        let d = t[t.index(after: at)...]
        return d.isEmpty ? nil : d.lowercased()
    }
}

public struct DMARCError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ d: String) { description = d }
}
