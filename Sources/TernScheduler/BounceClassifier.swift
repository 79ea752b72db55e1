// Bounce classification (issue 18 item 4): every reply that is not a 2xx
// gets one category, from rules that match its code, its enhanced status
// code and a regular expression on its text. User rules (`[[bounce_rule]]`)
// are tried first, then the shipped ones (text patterns of the big
// providers and common MTAs, then enhanced-code and basic-code fallbacks).
// The category is stored on the attempt row, decides suppression (by
// default only "invalid recipient" and "inactive mailbox" suppress) and can
// be matched by throttling rules. The shipped rules are checked against a
// corpus of real replies (Tests/TernSchedulerTests/Fixtures/bounce-corpus.tsv).

import Foundation
import TernProtocol

public enum BounceCategory: String, Sendable, CaseIterable, Codable {
    case invalidRecipient = "invalid_recipient"
    case mailboxFull = "mailbox_full"
    case inactiveMailbox = "inactive_mailbox"
    case spamContent = "spam_content"
    case reputation
    case policyAuth = "policy_auth"
    case rateLimit = "rate_limit"
    case dns
    case connection
    case tooLarge = "too_large"
    case other

    /// The categories whose bounces put the address on the suppression list by default.
    public static let suppressingByDefault: Set<BounceCategory> = [.invalidRecipient, .inactiveMailbox]
}

/// Which replies a rule (bounce or throttling) applies to. Every given part must match.
public struct ReplyMatcher: Sendable {
    /// An exact code (421) or a class (4 for 4xx, 5 for 5xx); nil: any.
    public enum Code: Sendable, Equatable {
        case exact(Int)
        case klass(Int)
    }
    public var code: Code?
    /// Enhanced status code: "5.7.1" exactly, "5.7" for every 5.7.x, and
    /// "x" in place of the class for both 4 and 5 ("x.1.1").
    public var enhanced: String?
    /// Case-insensitive regular expression searched in the reply's text.
    public var pattern: String?
    private let regex: NSRegularExpression?
    private let enhancedParts: [Int?]

    public init(code: Code? = nil, enhanced: String? = nil, pattern: String? = nil) throws {
        self.code = code
        self.enhanced = enhanced
        self.pattern = pattern
        if let pattern {
            do { regex = try NSRegularExpression(pattern: pattern, options: [.caseInsensitive]) } catch {
                throw ReplyMatcherError("not a regular expression: \(pattern)")
            }
        } else {
            regex = nil
        }
        if let enhanced {
            let parts = enhanced.split(separator: ".", omittingEmptySubsequences: false)
            guard (1...3).contains(parts.count) else { throw ReplyMatcherError("not an enhanced status code: \(enhanced)") }
            var out: [Int?] = []
            for (i, p) in parts.enumerated() {
                if i == 0, p == "x" || p == "X" { out.append(nil); continue }
                guard let n = Int(p), n >= 0, n <= 999, i > 0 || n == 2 || n == 4 || n == 5 else {
                    throw ReplyMatcherError("not an enhanced status code: \(enhanced)")
                }
                out.append(n)
            }
            enhancedParts = out
        } else {
            enhancedParts = []
        }
    }

    /// `"421"`, `"4xx"`/`"5xx"`, or an integer.
    public static func code(parsing text: String) -> Code? {
        let t = text.lowercased()
        if t.count == 3, t.hasSuffix("xx"), let k = Int(t.prefix(1)), (2...5).contains(k) { return .klass(k) }
        if let n = Int(t), (200...599).contains(n) { return .exact(n) }
        return nil
    }

    public func matches(_ reply: SMTPReply) -> Bool {
        switch code {
        case .exact(let c)? where reply.code != c: return false
        case .klass(let k)? where reply.code / 100 != k: return false
        default: break
        }
        if !enhancedParts.isEmpty {
            guard let e = reply.enhanced else { return false }
            let actual = [e.klass, e.subject, e.detail]
            for (i, want) in enhancedParts.enumerated() where want != nil && want != actual[i] { return false }
        }
        if let regex {
            let text = reply.text
            guard regex.firstMatch(in: text, range: NSRange(text.startIndex..., in: text)) != nil else { return false }
        }
        return true
    }
}

public struct ReplyMatcherError: Error, CustomStringConvertible {
    public var description: String
    init(_ d: String) { description = d }
}

public struct BounceRule: Sendable {
    public var matcher: ReplyMatcher
    public var category: BounceCategory

    public init(_ matcher: ReplyMatcher, _ category: BounceCategory) {
        self.matcher = matcher
        self.category = category
    }
}

public struct BounceClassifier: Sendable {
    /// User rules first, then the shipped ones.
    public let rules: [BounceRule]

    public init(custom: [BounceRule] = []) {
        rules = custom + BounceClassifier.shipped
    }

    /// The category of a reply that is not a success (nil for 2xx).
    public func classify(_ reply: SMTPReply) -> BounceCategory? {
        guard reply.code >= 300 else { return nil }
        for r in rules where r.matcher.matches(reply) { return r.category }
        return .other
    }

    private static func text(_ pattern: String, _ c: BounceCategory, code: ReplyMatcher.Code? = nil) -> BounceRule {
        // The shipped patterns are constants: a typo fails every test at once.
        BounceRule(try! ReplyMatcher(code: code, pattern: pattern), c)
    }

    private static func status(_ enhanced: String, _ c: BounceCategory) -> BounceRule {
        BounceRule(try! ReplyMatcher(enhanced: enhanced), c)
    }

    private static func basic(_ code: Int, _ c: BounceCategory) -> BounceRule {
        BounceRule(try! ReplyMatcher(code: .exact(code)), c)
    }

    /// Text first (providers put the real reason in words, often under a
    /// generic code such as 550 5.7.1), in an order where the more specific
    /// reason wins: rate before reputation before content before policy;
    /// then enhanced codes (RFC 3463), then basic codes.
    public static let shipped: [BounceRule] = [
        // Authentication and sender checks first: "rate limited because it
        // is unauthenticated" and "not accepted for policy reasons (DMARC)"
        // are fixed by authenticating, not by slowing down.
        text(#"\bSPF\b|\bDKIM\b|\bDMARC\b|unauthenticated|authenticate|sender address rejected|sender verify failed"#, .policyAuth),
        // Recipient directory refusals that carry a block-list-like tag (Microsoft's AS(…)).
        text(#"recipient address rejected: access denied|RecipientNotFound|RecipAddrNotFound"#, .invalidRecipient),
        // Rate limits and volume: the sender should slow down.
        text(#"rate.?limit|unusual rate|too many (messages|mails?|emails|connections|concurrent|sessions|recipients)|concurrent (server )?connections|maximum number of (concurrent )?connections|try again later, closing connection|SubmissionQuotaExceeded|(daily|hourly|relay|sending) .{0,20}(limit|quota) exceeded|receiving mail (too quickly|at a rate)|unexpected volume|\bTSS?0[124]\b|\bGL01\b|throttl|too fast|sending limits?|peak smtp relay limit|exceeded the (message|rate|connection) (rate|limit)|\bRL0?[0-9]\b|connection (rate|limit) exceeded|slow down|too much mail|high volume|ratelimit|message rate exceeded|4\.7\.28|server busy|too many (invalid|failed)|please try again later.*(volume|rate)"#, .rateLimit),
        // Reputation and blocklists: the sending IP or domain is distrusted.
        text(#"block ?list|black ?list|spamhaus|barracuda|spamcop|sorbs|\bs5h\b|\bRBL\b|\bDNSBL\b|listed (on|in|at|by)|reputation|\bTSS?0[39]\b|blocked using|banned (sending IP|sender)|traffic not accepted from this IP|\bS3150\b|\bS3140\b|poor (sender|sending) (history|score)|sender score|ip .{0,40}(has been |is )?(blocked|blacklisted|banned)|client host .{0,80}blocked|\bCS0[0-9]\b|cloudmark|proofpoint|not accepted for policy reasons"#, .reputation),
        // A domain that does not exist, before the recipient rules' "does not exist".
        text(#"host or domain name not found|name service error|domain (name )?(\S+ )?(not found|does not exist)|find the recipient domain|NXDOMAIN|null MX|unrouteable mail domain"#, .dns),
        // Mailbox state before content, as their words are specific.
        text(#"over ?quota|quota (exceeded|full)|exceeded (its|the|his|her) (storage|quota)|mailbox (is )?full|mailbox size limit|out of storage|not enough (storage|space)|storage (space )?(limit|allocation|quota)|exceeded storage|full mailbox|account.{0,20}full"#, .mailboxFull),
        text(#"disabled|inactiv|deactivated|suspended|(account|mailbox) (has been |is )?(locked|expired|closed|frozen|terminated|blocked by the owner)|no longer (active|available|in use|accepting)|not (currently )?active|\b(554\.30)\b|mailbox (is )?(unavailable for|temporarily) (use|disabled)|dormant|user (has )?moved"#, .inactiveMailbox),
        text(#"user unknown|unknown (user|recipient|mailbox|local part|address)|no such (user|mailbox|recipient|address|account|person)|does ?n[o']t (exist|have an? [a-z.]+ account)|doesn't exist|not exist|recipient (address )?rejected: (user unknown|undeliverable|access denied|no mailbox|unknown)|invalid (recipient|mailbox|address|user)|mailbox (not found|unavailable|does not exist|name not allowed)|recipient not found|RecipientNotFound|unrouteable address|recipient address (unknown|not found|rejected)|address (unknown|not found|not listed)|not a (valid|known) (recipient|user|mailbox)|undeliverable address|no mailbox|bad destination mailbox|unknown or illegal alias|account that you tried to reach does not exist|user not found|couldn't find the recipient|not our customer|address does not exist|mailbox unavailable"#, .invalidRecipient),
        // Size.
        text(#"too (large|big)|size (limit|exceeds|exceeded)|exceeds? .{0,30}(size|limit of)|message (size|length) (exceeds|exceeded|limit)|maximum (message )?size|\bexceeded .{0,20}message size"#, .tooLarge),
        // Content and spam.
        text(#"spam|unsolicited|junk|virus|malware|phish|suspicious|harmful|(message|content) (rejected|blocked|refused) (due to|because of|as)|content (filter|policy|rejected)|prohibited|banned (attachment|file|content)|attachment|\bURL\b|links? (in|to)|bulk ?mail|message (looks|seems|appears)|\bscore\b|DT:SPM"#, .spamContent),
        // Authentication and policy.
        text(#"\bSPF\b|\bDKIM\b|\bDMARC\b|authenticat|unauthenticated|not (authorized|permitted|allowed) to (send|relay)|relay(ing)? (access )?(denied|not permitted|prohibited)|sender (address |domain )?(rejected|denied|not allowed|verify failed)|TLS (is )?required|requires? (TLS|encryption|STARTTLS)|must issue a STARTTLS|\bPTR\b|reverse (DNS|lookup|hostname)|rDNS|RFC ?5322|RFC ?2822|From: header|header (field|line)? .{0,30}(missing|invalid|malformed)|\bpolicy\b|access denied|not allowed|domain of sender|sender rejected|5\.7\.(2[3-7]|1 .{0,20}sender)"#, .policyAuth),
        // DNS.
        text(#"\bDNS\b|(no|lookup|looking up) MX\b|\bMX (record|lookup)|NXDOMAIN|domain (not found|does not exist|name not found)|host (not found|unknown)|host or domain name not found|name service error|unable to resolve|unrouteable (mail )?domain|null MX|no (MX|A|AAAA) (record|host)|\bdomain (is )?(invalid|unknown)"#, .dns),
        // Connections.
        text(#"connection (refused|timed out|reset|lost|closed|dropped|failed)|lost connection|closed (the )?connection|timed? ?out|\btimeout\b|network (is )?unreachable|no route to host|broken pipe|could not connect|cannot connect|unable to connect|no answer from|cooling down"#, .connection),

        // RFC 3463 subjects and details, when the text said nothing we know.
        status("x.7.28", .rateLimit),
        status("x.4.5", .rateLimit),
        status("x.7.26", .policyAuth), status("x.7.25", .policyAuth), status("x.7.27", .policyAuth),
        status("x.7.23", .policyAuth), status("x.7.24", .policyAuth), status("x.7.20", .policyAuth),
        status("x.7.21", .policyAuth), status("x.7.22", .policyAuth),
        status("x.1.1", .invalidRecipient), status("x.1.6", .invalidRecipient), status("x.1.3", .invalidRecipient),
        status("x.1.0", .invalidRecipient),
        status("x.1.2", .dns), status("x.1.10", .dns), status("x.4.3", .dns), status("x.4.4", .dns),
        status("x.2.1", .inactiveMailbox),
        status("x.2.2", .mailboxFull),
        status("x.2.3", .tooLarge), status("x.3.4", .tooLarge),
        status("x.3", .other), status("x.5", .other),
        status("x.4.1", .connection), status("x.4.2", .connection), status("x.4.7", .connection),
        status("x.4.0", .connection),
        status("x.6", .spamContent),
        status("x.7.1", .policyAuth), status("x.7", .policyAuth),
        // Basic codes alone (RFC 5321 §4.2.3).
        basic(421, .connection),
        basic(552, .tooLarge),
        basic(553, .invalidRecipient),
    ]
}
