// The Public Suffix List (publicsuffix.org's algorithm), read once from
// Debian's `publicsuffix` package, for DMARC's organisational domain
// (RFC 7489 §3.2): the public suffix of a name plus one label. Rules in
// Unicode are kept as A-labels, since the names Tern compares are A-labels.

import Foundation
import TernProtocol

public struct PublicSuffixList: Sendable {
    public static let debianPath = "/usr/share/publicsuffix/public_suffix_list.dat"

    var rules: Set<String> = []
    /// "*.ck" is kept as "ck".
    var wildcards: Set<String> = []
    /// "!www.ck" is kept as "www.ck".
    var exceptions: Set<String> = []

    public var count: Int { rules.count + wildcards.count + exceptions.count }

    public init(text: String) {
        for raw in text.split(whereSeparator: \.isNewline) {
            let line = raw.split(whereSeparator: \.isWhitespace).first.map(String.init) ?? ""
            if line.isEmpty || line.hasPrefix("//") { continue }
            if line.hasPrefix("!") {
                if let r = PublicSuffixList.ascii(String(line.dropFirst())) { exceptions.insert(r) }
            } else if line.hasPrefix("*.") {
                if let r = PublicSuffixList.ascii(String(line.dropFirst(2))) { wildcards.insert(r) }
            } else if let r = PublicSuffixList.ascii(line) {
                rules.insert(r)
            }
        }
    }

    /// Reads the list; a clear error naming the file when it cannot.
    public init(path: String = PublicSuffixList.debianPath) throws {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw DMARCError("cannot read the Public Suffix List at \(path) (Debian package publicsuffix)")
        }
        self.init(text: String(decoding: data, as: UTF8.self))
        guard count > 1000 else { throw DMARCError("\(path) holds \(count) rules: not the Public Suffix List") }
    }

    static func ascii(_ rule: String) -> String? {
        rule.unicodeScalars.allSatisfy(\.isASCII) ? rule.lowercased() : IDNA.toASCII(rule)?.lowercased()
    }

    /// The public suffix of `domain` (lower-case, without a final dot); the default rule "*" when none matches.
    public func publicSuffix(_ domain: String) -> String {
        let d = domain.lowercased().trimmingDot
        guard !d.isEmpty else { return "" }
        // Suffixes from the longest (the whole name) to the last label: the first rule that matches prevails.
        var start = d.startIndex
        while true {
            let candidate = d[start...]
            let rest = candidate.firstIndex(of: ".").map { candidate[candidate.index(after: $0)...] }
            if exceptions.contains(String(candidate)) { return rest.map(String.init) ?? "" } // the rule without its first label
            if rules.contains(String(candidate)) { return String(candidate) }
            if let rest, wildcards.contains(String(rest)) { return String(candidate) }
            guard let rest else { return String(candidate) } // the default rule: the last label
            start = rest.startIndex
        }
    }

    /// The organisational domain: the public suffix and one more label; the name itself when it is a public suffix.
    public func organizationalDomain(_ domain: String) -> String {
        let d = domain.lowercased().trimmingDot
        let suffix = publicSuffix(d)
        guard d.count > suffix.count else { return d }
        let rest = d.dropLast(suffix.count + 1)
        let label = rest.split(separator: ".").last.map(String.init) ?? String(rest)
        return label + "." + suffix
    }
}
