// The checks intake runs on mail from other MTAs: SPF (MAIL FROM, or HELO
// for a null path) and DKIM side by side, then DMARC over both, and the
// Authentication-Results: field (RFC 8601) that records them, with the
// values kept on the message row.

import TernMessage
import TernProtocol
import TernRouting
import TernStore

public struct AuthenticationReport: Sendable {
    /// The MAIL FROM identity's verdict (the HELO identity's for a null reverse-path): DMARC's, and the row's.
    public var spf: SPFVerdict
    /// The HELO identity's own verdict (RFC 7208 §2.3), when MAIL FROM had a domain of its own.
    public var helo: SPFVerdict?
    public var dkim: [DKIMSignatureVerdict]
    public var dmarc: DMARCVerdict
    /// The Authentication-Results: value (without the field name and the final CRLF).
    public var header: String

    /// The message's DKIM result: pass when any signature passed, else the first one's, none without signatures.
    public var dkimSummary: DKIMResult {
        dkim.contains { $0.result == .pass } ? .pass : dkim.first?.result ?? .none
    }

    public var columns: AuthenticationColumns {
        AuthenticationColumns(spf: spf.result.rawValue, dkim: dkimSummary.rawValue, dmarc: dmarc.result.rawValue,
                              disposition: dmarc.disposition.rawValue, results: header)
    }
}

public struct MailVerifier: Sendable {
    public let spf: SPFChecker
    public let dkim: DKIMVerifier
    public let dmarc: DMARCChecker
    /// The name in Authentication-Results: (RFC 8601 §2.5): the host name unless configured.
    public let authservID: String

    public init(dns: any AuthDNS, psl: PublicSuffixList, authservID: String, clock: @escaping @Sendable () -> Int64,
                percentile: @escaping @Sendable () -> Int = { Int.random(in: 0..<100) }) {
        spf = SPFChecker(dns: dns, receiver: authservID, clock: clock)
        dkim = DKIMVerifier(dns: dns, clock: clock)
        dmarc = DMARCChecker(dns: dns, psl: psl, percentile: percentile)
        self.authservID = authservID
    }

    /// Every check; `spfAtMail` is the SPF verdict already made at MAIL (not asked again).
    public func verify(ip: IPAddress, mailFrom: String, helo: String, message: [UInt8], spfAtMail: SPFVerdict? = nil) async -> AuthenticationReport {
        async let spfVerdict = spfAtMail == nil ? spf.check(ip: ip, mailFrom: mailFrom, helo: helo) : spfAtMail!
        // The HELO identity too (RFC 7208 §2.3), when it is a name and not already the one checked.
        async let heloVerdict = mailFrom.isEmpty || !isValidDomain(helo) ? nil : spf.checkHelo(ip: ip, helo: helo)
        // The header is split once, for DKIM and for DMARC's From: domain.
        let (fields, bodyStart) = DKIMCanonical.split(message)
        async let dkimVerdicts = dkim.verify(message, fields: fields, bodyStart: bodyStart)
        let (s, h, d) = await (spfVerdict, heloVerdict, dkimVerdicts)
        let m = await dmarc.check(fromDomains: fromDomains(fields), spf: s, dkim: d)
        return AuthenticationReport(spf: s, helo: h, dkim: d, dmarc: m,
                                    header: AuthenticationResults.value(authservID: authservID, spf: s, helo: h, dkim: d, dmarc: m, mailFrom: mailFrom))
    }

    /// The refusal for MAIL when SPF fails (the opt-in check at MAIL), nil otherwise; a DNS failure never refuses.
    public static func mailRefusal(_ v: SPFVerdict, ip: IPAddress) -> SMTPReply? {
        guard v.result == .fail else { return nil }
        var text = "SPF: \(v.domain) does not designate \(ip) as a permitted sender"
        if let e = v.explanation { text += " (\(e))" }
        return SMTPReply(550, .spfFailed, text)
    }
}

/// Authentication-Results: (RFC 8601 §2.2), one resinfo per method, DKIM once per signature.
public enum AuthenticationResults {
    public static func value(authservID: String, spf: SPFVerdict, helo: SPFVerdict? = nil, dkim: [DKIMSignatureVerdict], dmarc: DMARCVerdict,
                             mailFrom: String) -> String {
        var parts: [String] = [authservID]
        for v in [spf, helo].compactMap({ $0 }) {
            let identity = v.identity == "helo" ? "smtp.helo=\(token(v.domain))" : "smtp.mailfrom=\(token(mailFrom.isEmpty ? v.domain : mailFrom))"
            parts.append("spf=\(v.result.rawValue)\(comment(v.result == .pass ? "" : v.reason)) \(identity)")
        }
        if dkim.isEmpty {
            parts.append("dkim=none")
        }
        for sig in dkim {
            var p = "dkim=\(sig.result.rawValue)\(comment(sig.reason))"
            if !sig.domain.isEmpty { p += " header.d=\(token(sig.domain))" }
            if !sig.selector.isEmpty { p += " header.s=\(token(sig.selector))" }
            if !sig.algorithm.isEmpty { p += " header.a=\(token(sig.algorithm))" }
            if !sig.shortSignature.isEmpty { p += " header.b=\(token(sig.shortSignature))" }
            parts.append(p)
        }
        var d = "dmarc=\(dmarc.result.rawValue)"
        if let r = dmarc.record {
            d += " (p=\(r.policy.rawValue)" + (r.subdomainPolicy.map { " sp=\($0.rawValue)" } ?? "") + " dis=\(dmarc.disposition.rawValue))"
        } else if !dmarc.reason.isEmpty {
            d += comment(dmarc.reason)
        }
        if !dmarc.fromDomain.isEmpty { d += " header.from=\(token(dmarc.fromDomain))" }
        parts.append(d)
        return parts.joined(separator: ";\r\n\t")
    }

    /// A value as an RFC 2045 token, else a quoted string ("@" and "/" are
    /// left bare, as pvalues and base64 prefixes carry them).
    static func token(_ s: String) -> String {
        var bare = !s.isEmpty
        var printable = true
        for b in s.utf8 {
            if b == 0x20 { bare = false; continue }
            if b < 0x20 || b >= 0x7F { printable = false; bare = false; break }
            if tspecials[Int(b)] { bare = false }
        }
        if bare { return s }
        let clean = printable ? s : String(decoding: s.utf8.filter { $0 >= 0x20 && $0 < 0x7F }, as: UTF8.self)
        return "\"" + clean.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
    }

    /// RFC 2045's tspecials but "@" and "/", by octet.
    static let tspecials: [Bool] = (0..<128).map { "()<>,;:\\\"[]?=".utf8.contains(UInt8($0)) }

    /// " (text)" as an RFC 5322 comment: printable ASCII, no parentheses or backslashes, at most 120 characters.
    static func comment(_ s: String) -> String {
        guard !s.isEmpty else { return "" }
        let clean = String(s.unicodeScalars.filter { $0.value >= 0x20 && $0.value < 0x7F && !"()\\".unicodeScalars.contains($0) }.map(Character.init))
        return " (" + String(clean.prefix(120)) + ")"
    }
}
