// SMTP command lines (RFC 5321 §4.1.1) and their ESMTP parameters
// (RFC 1870 SIZE, RFC 6152 8BITMIME, RFC 6531 SMTPUTF8, RFC 3461 DSN,
// RFC 3030 CHUNKING) parsed into values. Pure; called by the session machine.

/// RFC 3461 §4.1 NOTIFY.
public struct Notify: Sendable, Hashable {
    public var never = false
    public var success = false
    public var failure = false
    public var delay = false

    public init(never: Bool = false, success: Bool = false, failure: Bool = false, delay: Bool = false) {
        self.never = never; self.success = success; self.failure = failure; self.delay = delay
    }

    /// The stored form: `NEVER` or a comma list in canonical order.
    public var storedForm: String {
        if never { return "NEVER" }
        var parts: [String] = []
        if success { parts.append("SUCCESS") }
        if failure { parts.append("FAILURE") }
        if delay { parts.append("DELAY") }
        return parts.joined(separator: ",")
    }

    static func parse(_ value: Substring) -> Notify? {
        var n = Notify()
        let items = value.split(separator: ",", omittingEmptySubsequences: false).map { $0.uppercased() }
        guard !items.isEmpty else { return nil }
        for item in items {
            switch item {
            case "NEVER": n.never = true
            case "SUCCESS": n.success = true
            case "FAILURE": n.failure = true
            case "DELAY": n.delay = true
            default: return nil
            }
        }
        if n.never && items.count > 1 { return nil } // NEVER stands alone
        if Set(items).count != items.count { return nil }
        return n
    }
}

/// RFC 3461 §4.2 ORCPT: an address type and the decoded original address.
public struct OriginalRecipient: Sendable, Hashable {
    public var addressType: String
    public var address: String
    public init(addressType: String, address: String) {
        self.addressType = addressType
        self.address = address
    }
    /// The stored form, `type;address` (decoded).
    public var storedForm: String { "\(addressType);\(address)" }
}

public enum BodyType: String, Sendable, Hashable {
    case sevenBit = "7BIT"
    case eightBitMIME = "8BITMIME"
}

public enum DSNReturn: String, Sendable, Hashable {
    case full = "FULL"
    case headers = "HDRS"
}

/// MAIL FROM parameters.
public struct MailParameters: Sendable, Hashable {
    public var size: Int?
    public var body: BodyType?
    public var smtputf8 = false
    public var ret: DSNReturn?
    public var envelopeID: String?
    /// RFC 4954 §5 `AUTH=`: the submitter a previous hop vouched for (xtext
    /// decoded; "<>" when unknown). Parsed and not trusted: Tern records its
    /// own authenticated user instead.
    public var auth: String?
    public init() {}
}

/// RCPT TO parameters.
public struct RecipientParameters: Sendable, Hashable {
    public var notify: Notify?
    public var orcpt: OriginalRecipient?
    public init() {}
}

/// A parsed command line.
public enum SMTPCommand: Sendable, Hashable {
    case helo(String)
    case ehlo(String)
    case mail(SMTPPath, MailParameters)
    case rcpt(SMTPPath, RecipientParameters)
    case data
    case bdat(size: Int, last: Bool)
    case rset
    case noop
    case quit
    case vrfy(String)
    case expn(String)
    case help(String?)
    case starttls
    case auth(String)
}

/// A command that could not be parsed, with the reply it earns.
public struct CommandError: Error, Sendable, Equatable {
    public var reply: SMTPReply
    public init(_ reply: SMTPReply) { self.reply = reply }
}

public enum CommandParser {
    /// Parses one command line (without its CRLF). `esmtp` is true after EHLO;
    /// parameters are refused after HELO.
    public static func parse(_ line: Substring, esmtp: Bool = true) -> Result<SMTPCommand, CommandError> {
        // The verb is case-insensitive (RFC 5321 §2.4).
        let verbEnd = line.firstIndex(of: " ") ?? line.endIndex
        let verb = line[..<verbEnd].uppercased()
        var rest = line[verbEnd...]
        if rest.first == " " { rest = rest.dropFirst() }
        let hasArgs = verbEnd != line.endIndex

        func noArgs(_ c: SMTPCommand) -> Result<SMTPCommand, CommandError> {
            hasArgs && !rest.allSatisfy({ $0 == " " })
                ? .failure(CommandError(SMTPReply(501, .invalidArguments, "Syntax: \(verb) takes no arguments")))
                : .success(c)
        }

        switch verb {
        case "HELO", "EHLO":
            let arg = rest.split(separator: " ").first.map(String.init) ?? ""
            guard !arg.isEmpty else {
                return .failure(CommandError(SMTPReply(501, .invalidArguments, "Syntax: \(verb) hostname")))
            }
            return .success(verb == "HELO" ? .helo(arg) : .ehlo(arg))
        case "MAIL":
            return parseMail(rest, esmtp: esmtp)
        case "RCPT":
            return parseRcpt(rest, esmtp: esmtp)
        case "DATA":
            return noArgs(.data)
        case "BDAT":
            let parts = rest.split(separator: " ")
            guard (1...2).contains(parts.count), parts[0].count <= 18, parts[0].allSatisfy({ $0.isASCII && $0.isNumber }),
                  let n = Int(parts[0]) else {
                return .failure(CommandError(SMTPReply(501, .invalidArguments, "Syntax: BDAT size [LAST]")))
            }
            if parts.count == 2 && parts[1].uppercased() != "LAST" {
                return .failure(CommandError(SMTPReply(501, .invalidArguments, "Syntax: BDAT size [LAST]")))
            }
            return .success(.bdat(size: n, last: parts.count == 2))
        case "RSET": return noArgs(.rset)
        case "NOOP": return .success(.noop) // RFC 5321 §4.1.1.9: a parameter is ignored
        case "QUIT": return noArgs(.quit)
        case "VRFY":
            guard !rest.isEmpty else { return .failure(CommandError(SMTPReply(501, .invalidArguments, "Syntax: VRFY address"))) }
            return .success(.vrfy(String(rest)))
        case "EXPN":
            guard !rest.isEmpty else { return .failure(CommandError(SMTPReply(501, .invalidArguments, "Syntax: EXPN list"))) }
            return .success(.expn(String(rest)))
        case "HELP": return .success(.help(rest.isEmpty ? nil : String(rest)))
        case "STARTTLS": return noArgs(.starttls)
        case "AUTH": return .success(.auth(String(rest)))
        default:
            return .failure(CommandError(SMTPReply(500, .invalidCommand, "Error: command not recognized")))
        }
    }

    /// Splits `FROM:<path> params` after the keyword. Tolerates spaces after
    /// the colon, as Postfix and most MTAs do.
    static func splitPathAndParams(_ rest: Substring, keyword: String) -> (Substring, [Substring])? {
        // Bytes, not Characters: every delimiter here is ASCII, and UTF-8
        // never puts an ASCII byte inside a multi-byte character.
        let u = rest.utf8
        var i = u.startIndex
        for k in keyword.utf8 { // the keyword ("FROM:", "TO:") in any case
            guard i < u.endIndex, u[i] == k || (k >= 65 && k <= 90 && u[i] == k + 32) else { return nil }
            u.formIndex(after: &i)
        }
        while i < u.endIndex, u[i] == UInt8(ascii: " ") { u.formIndex(after: &i) }
        guard i < u.endIndex, u[i] == UInt8(ascii: "<") else { return nil }
        let start = i
        // The path ends at the first '>' outside a quoted string.
        var inQuote = false, escaped = false
        var end: Substring.UTF8View.Index? = nil
        while i < u.endIndex {
            let c = u[i]
            if escaped { escaped = false } else if c == UInt8(ascii: "\\") && inQuote { escaped = true } else if c == UInt8(ascii: "\"") { inQuote.toggle() } else if c == UInt8(ascii: ">") && !inQuote { end = i; break }
            u.formIndex(after: &i)
        }
        guard let e = end else { return nil }
        let path = rest[start...e]
        let after = rest[u.index(after: e)...]
        if !after.isEmpty && after.first != " " { return nil }
        return (path, after.split(separator: " "))
    }

    static func pathError(_ e: AddressError, sender: Bool) -> CommandError {
        let enhanced: EnhancedStatus = sender ? .badSenderSyntax : .badDestinationSyntax
        switch e {
        case .syntax(let why): return CommandError(SMTPReply(501, enhanced, "Bad \(sender ? "sender" : "recipient") address syntax: \(why)"))
        case .tooLong(let why): return CommandError(SMTPReply(501, enhanced, "Address too long: \(why)"))
        case .nonASCII: return CommandError(SMTPReply(553, .nonASCIINotPermitted, "Non-ASCII addresses require SMTPUTF8"))
        }
    }

    static func parseMail(_ rest: Substring, esmtp: Bool) -> Result<SMTPCommand, CommandError> {
        let pathText: Substring, pairs: [(String, Substring?)]
        switch pathAndParameters(rest, keyword: "FROM:", verb: "MAIL", esmtp: esmtp) {
        case .failure(let e): return .failure(e)
        case .success(let v): (pathText, pairs) = v
        }
        var params = MailParameters()
        for (key, value) in pairs {
            switch key {
            case "SIZE": // RFC 1870: 1*20DIGIT
                guard let v = value, !v.isEmpty, v.count <= 20, v.allSatisfy({ $0.isASCII && $0.isNumber }) else {
                    return .failure(CommandError(SMTPReply(501, .invalidArguments, "Bad SIZE parameter")))
                }
                params.size = Int(v) ?? Int.max
            case "BODY":
                guard let v = value, let b = BodyType(rawValue: v.uppercased()) else {
                    return .failure(CommandError(SMTPReply(501, .invalidArguments, "Bad BODY parameter (7BIT or 8BITMIME)")))
                }
                params.body = b
            case "SMTPUTF8":
                guard value == nil else {
                    return .failure(CommandError(SMTPReply(501, .invalidArguments, "SMTPUTF8 takes no value")))
                }
                params.smtputf8 = true
            case "RET":
                guard let v = value, let r = DSNReturn(rawValue: v.uppercased()) else {
                    return .failure(CommandError(SMTPReply(501, .invalidArguments, "Bad RET parameter (FULL or HDRS)")))
                }
                params.ret = r
            case "ENVID": // RFC 3461 §4.4: xtext, at most 100 characters
                guard let v = value, !v.isEmpty, v.count <= 100, let decoded = XText.decode(v) else {
                    return .failure(CommandError(SMTPReply(501, .invalidArguments, "Bad ENVID parameter")))
                }
                params.envelopeID = decoded
            case "AUTH": // RFC 4954 §5: xtext mailbox or "<>"
                guard let v = value, !v.isEmpty, let decoded = XText.decode(v) else {
                    return .failure(CommandError(SMTPReply(501, .invalidArguments, "Bad AUTH parameter")))
                }
                params.auth = decoded
            default:
                return .failure(CommandError(SMTPReply(555, .invalidArguments, "Unsupported MAIL parameter \(key)")))
            }
        }
        switch AddressParser.parsePath(pathText, allowUTF8: params.smtputf8, allowNull: true, allowPostmaster: false) {
        case .success(let p): return .success(.mail(p, params))
        case .failure(let e): return .failure(pathError(e, sender: true))
        }
    }

    static func parseRcpt(_ rest: Substring, esmtp: Bool) -> Result<SMTPCommand, CommandError> {
        let pathText: Substring, pairs: [(String, Substring?)]
        switch pathAndParameters(rest, keyword: "TO:", verb: "RCPT", esmtp: esmtp) {
        case .failure(let e): return .failure(e)
        case .success(let v): (pathText, pairs) = v
        }
        var params = RecipientParameters()
        for (key, value) in pairs {
            switch key {
            case "NOTIFY":
                guard let v = value, let n = Notify.parse(v) else {
                    return .failure(CommandError(SMTPReply(501, .invalidArguments, "Bad NOTIFY parameter")))
                }
                params.notify = n
            case "ORCPT": // RFC 3461 §4.2: addr-type ";" xtext
                guard let v = value, let semi = v.firstIndex(of: ";") else {
                    return .failure(CommandError(SMTPReply(501, .invalidArguments, "Bad ORCPT parameter")))
                }
                let type = v[..<semi], encoded = v[v.index(after: semi)...]
                guard !type.isEmpty, type.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-") }),
                      !encoded.isEmpty, encoded.count <= 500, let decoded = XText.decode(encoded) else {
                    return .failure(CommandError(SMTPReply(501, .invalidArguments, "Bad ORCPT parameter")))
                }
                params.orcpt = OriginalRecipient(addressType: type.lowercased(), address: decoded)
            default:
                return .failure(CommandError(SMTPReply(555, .invalidArguments, "Unsupported RCPT parameter \(key)")))
            }
        }
        // UTF-8 is checked against the transaction by the session; parse permissively here.
        switch AddressParser.parsePath(pathText, allowUTF8: true, allowNull: false, allowPostmaster: true) {
        case .success(let p): return .success(.rcpt(p, params))
        case .failure(let e): return .failure(pathError(e, sender: false))
        }
    }

    /// The path and the `KEY[=value]` pairs of MAIL/RCPT (RFC 5321 §4.1.2
    /// Mail-parameters), each key once, and only after EHLO.
    static func pathAndParameters(_ rest: Substring, keyword: String, verb: String, esmtp: Bool)
        -> Result<(Substring, [(String, Substring?)]), CommandError>
    {
        guard let (pathText, rawParams) = splitPathAndParams(rest, keyword: keyword) else {
            return .failure(CommandError(SMTPReply(501, .syntaxError, "Syntax: \(verb) \(keyword)<address>")))
        }
        if !rawParams.isEmpty && !esmtp {
            return .failure(CommandError(SMTPReply(555, .invalidArguments, "\(verb) parameters need EHLO")))
        }
        var seen = Set<String>()
        var pairs: [(String, Substring?)] = []
        for raw in rawParams {
            let (key, value) = splitParam(raw)
            guard seen.insert(key).inserted else {
                return .failure(CommandError(SMTPReply(501, .invalidArguments, "Duplicate parameter \(key)")))
            }
            pairs.append((key, value))
        }
        return .success((pathText, pairs))
    }

    static func splitParam(_ raw: Substring) -> (String, Substring?) {
        if let eq = raw.firstIndex(of: "=") {
            return (raw[..<eq].uppercased(), raw[raw.index(after: eq)...])
        }
        return (raw.uppercased(), nil)
    }
}

/// RFC 3461 §4 xtext: printable ASCII except '+' and '=', with `+XX` hex escapes.
public enum XText {
    public static func decode(_ s: some StringProtocol) -> String? {
        var bytes: [UInt8] = []
        var it = Array(s.utf8)[...]
        while let c = it.popFirst() {
            if c == UInt8(ascii: "+") {
                guard it.count >= 2, let v = UInt8(String(decoding: it.prefix(2), as: UTF8.self), radix: 16),
                      it.prefix(2).allSatisfy({ (48...57).contains($0) || (65...70).contains($0) }) else { return nil }
                bytes.append(v)
                it = it.dropFirst(2)
            } else if c >= 33 && c <= 126 && c != UInt8(ascii: "=") {
                bytes.append(c)
            } else {
                return nil
            }
        }
        // RFC 3461 §4: xtext carries printable text; a control character
        // decoded from "+0D", "+0A" or "+00" would go into DSN headers and
        // our logs as it is (header injection), so it is refused.
        if bytes.contains(where: { $0 < 0x20 || $0 == 0x7F }) { return nil }
        return String(validating: bytes, as: UTF8.self)
    }

    public static func encode(_ s: String) -> String {
        var out = ""
        for b in s.utf8 {
            if b >= 33 && b <= 126 && b != UInt8(ascii: "+") && b != UInt8(ascii: "=") {
                out.append(Character(Unicode.Scalar(b)))
            } else {
                out += "+" + String(b, radix: 16, uppercase: true).leftPadded(2)
            }
        }
        return out
    }
}

extension String {
    func leftPadded(_ n: Int) -> String { count >= n ? self : String(repeating: "0", count: n - count) + self }
}
