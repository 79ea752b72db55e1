// The injection API's request (issue 20): `POST /api/v1/messages`, in the
// spirit of KumoMTA's `/api/inject/v1`. Pure: JSON in, checked envelope and
// RFC 5322 messages out, every refusal naming the field at fault. The
// handler (HTTPServer) hands each message to Intake, the same path as SMTP.
//
//   {"envelope_sender": "news@example.com",
//    "recipients": [{"email": "ann@example.net", "name": "Ann", "substitutions": {"first": "Ann"}}],
//    "content": "From: …\r\n…"                                   (the whole message), or
//    "content": {"from": {"email": "news@example.com", "name": "News"}, "subject": "Hello {{ first }}",
//                "text_body": "…", "html_body": "…", "reply_to": {…}, "headers": {"X-Campaign": "7"},
//                "attachments": [{"file_name": "a.pdf", "content_type": "application/pdf", "data": "…", "base64": true}]},
//    "substitutions": {"offer": "10 %"}}
//
// A message is built per recipient when the content is the simple form or
// anything is substituted (each has its own To: and values); otherwise one
// message carries every recipient. `{{ name }}` is replaced by the
// recipient's value, else the request's, else nothing; values put into a
// header field lose their line breaks (no header injection).

import Foundation
import TernProtocol

/// A refusal: the HTTP status, the field at fault (a JSON path), and why.
public struct InjectionError: Error, Sendable, Equatable, CustomStringConvertible {
    public var status: Int
    public var field: String?
    public var message: String

    public init(_ status: Int = 400, field: String?, _ message: String) {
        self.status = status
        self.field = field
        self.message = message
    }

    public var description: String { field.map { "\($0): \(message)" } ?? message }
}

public struct InjectionLimits: Sendable {
    public var maxMessageSize: Int
    public var maxRecipients: Int
    /// Longest line of a message (RFC 5321 §4.5.3.1.6: 998 and CRLF).
    public var maxLine = 998

    public init(maxMessageSize: Int, maxRecipients: Int) {
        self.maxMessageSize = maxMessageSize
        self.maxRecipients = maxRecipients
    }
}

public struct InjectionRecipient: Sendable, Equatable {
    public var mailbox: Mailbox
    public var name: String?
    public var substitutions: [String: String]
}

public struct InjectionAttachment: Sendable, Equatable {
    public var fileName: String?
    public var contentType: String
    public var data: [UInt8]
}

public struct SimpleContent: Sendable, Equatable {
    public var from: (email: String, name: String?)
    public var subject: String?
    public var text: String?
    public var html: String?
    public var replyTo: (email: String, name: String?)?
    public var headers: [(String, String)] = []
    public var attachments: [InjectionAttachment] = []

    public static func == (a: SimpleContent, b: SimpleContent) -> Bool {
        a.from == b.from && a.subject == b.subject && a.text == b.text && a.html == b.html && a.replyTo?.email == b.replyTo?.email
            && a.replyTo?.name == b.replyTo?.name && a.headers.elementsEqual(b.headers, by: ==) && a.attachments == b.attachments
    }
}

public enum InjectionContent: Sendable, Equatable {
    case raw(String)
    case simple(SimpleContent)
}

/// One message to commit: its recipients and its RFC 5322 text (CRLF lines).
public struct InjectedMessage: Sendable {
    public var recipients: [InjectionRecipient]
    public var body: [UInt8]
}

public struct InjectionRequest: Sendable, Equatable {
    /// nil: the null reverse-path (`""`), as for notifications.
    public var sender: Mailbox?
    public var recipients: [InjectionRecipient]
    public var content: InjectionContent
    public var substitutions: [String: String]

    /// Parses and checks a request body; throws the first fault found.
    public static func parse(_ bytes: [UInt8], limits: InjectionLimits) throws(InjectionError) -> InjectionRequest {
        let object: [String: Any]
        do {
            guard let o = try JSONSerialization.jsonObject(with: Data(bytes), options: [.fragmentsAllowed]) as? [String: Any] else {
                throw InjectionError(field: nil, "the body must be a JSON object")
            }
            object = o
        } catch let e as InjectionError {
            throw e
        } catch {
            throw InjectionError(field: nil, "the body is not valid JSON")
        }
        let known: Set = ["envelope_sender", "recipients", "content", "substitutions"]
        if let stray = object.keys.sorted().first(where: { !known.contains($0) }) {
            throw InjectionError(field: stray, "unknown field (expected envelope_sender, recipients, content, substitutions)")
        }
        guard let senderText = object["envelope_sender"] else { throw InjectionError(field: "envelope_sender", "required") }
        guard let senderString = senderText as? String else { throw InjectionError(field: "envelope_sender", "must be a string") }
        let sender = senderString.isEmpty ? nil : try mailbox(senderString, field: "envelope_sender")

        guard let list = object["recipients"] else { throw InjectionError(field: "recipients", "required") }
        guard let items = list as? [Any] else { throw InjectionError(field: "recipients", "must be an array") }
        guard !items.isEmpty else { throw InjectionError(field: "recipients", "must name at least one recipient") }
        guard items.count <= limits.maxRecipients else {
            throw InjectionError(field: "recipients", "\(items.count) recipients; at most \(limits.maxRecipients) per request")
        }
        var recipients: [InjectionRecipient] = []
        for (i, item) in items.enumerated() {
            let field = "recipients[\(i)]"
            guard let r = item as? [String: Any] else { throw InjectionError(field: field, "must be an object with email") }
            if let stray = r.keys.sorted().first(where: { !["email", "name", "substitutions"].contains($0) }) {
                throw InjectionError(field: "\(field).\(stray)", "unknown field")
            }
            guard let email = r["email"] as? String else { throw InjectionError(field: "\(field).email", "required, a string") }
            let name = try optionalString(r["name"], field: "\(field).name")
            recipients.append(InjectionRecipient(mailbox: try mailbox(email, field: "\(field).email"), name: name,
                                                 substitutions: try substitutionMap(r["substitutions"], field: "\(field).substitutions")))
        }
        let substitutions = try substitutionMap(object["substitutions"], field: "substitutions")

        guard let c = object["content"] else { throw InjectionError(field: "content", "required") }
        let content: InjectionContent
        if let raw = c as? String {
            guard !raw.isEmpty else { throw InjectionError(field: "content", "is empty") }
            content = .raw(raw)
        } else if let o = c as? [String: Any] {
            content = .simple(try simple(o))
        } else {
            throw InjectionError(field: "content", "must be the message as a string, or an object with from, subject, text_body, html_body")
        }
        let request = InjectionRequest(sender: sender, recipients: recipients, content: content, substitutions: substitutions)
        if case .raw(let text) = content, !request.perRecipient {
            // Checked once here; with substitutions each built message is checked.
            _ = try InjectionRequest.normalized(text, limits: limits)
        }
        return request
    }

    /// One message per recipient: the simple form, or any substitution.
    public var perRecipient: Bool {
        if case .simple = content { return true }
        return !substitutions.isEmpty || recipients.contains { !$0.substitutions.isEmpty }
    }

    /// The messages to commit, each checked against the limits.
    /// How many messages the request makes.
    public var messageCount: Int { perRecipient ? recipients.count : 1 }

    /// Message `index` (0 ..< messageCount), checked against the limits.
    public func message(_ index: Int, limits: InjectionLimits, boundary: () -> String = InjectionRequest.randomBoundary) throws(InjectionError) -> InjectedMessage {
        guard perRecipient else {
            guard case .raw(let text) = content else { throw InjectionError(field: "content", "no content") }
            return InjectedMessage(recipients: recipients, body: try InjectionRequest.normalized(text, limits: limits))
        }
        let r = recipients[index]
        let values = substitutions.merging(r.substitutions) { $1 }
        let text: String
        switch content {
        case .raw(let raw): text = InjectionRequest.substitute(raw, values, header: false)
        case .simple(let s): text = build(s, for: r, values: values, boundary: boundary())
        }
        do {
            return InjectedMessage(recipients: [r], body: try InjectionRequest.normalized(text, limits: limits))
        } catch {
            // Name the recipient whose values made the message too big or bad.
            throw InjectionError(error.status, field: error.field.map { perRecipient && recipients.count > 1 ? "\($0) (recipients[\(index)])" : $0 },
                                 error.message)
        }
    }

    /// Every message at once (for tests and small requests; the handler builds them in bounded batches).
    public func messages(limits: InjectionLimits, boundary: () -> String = InjectionRequest.randomBoundary) throws(InjectionError) -> [InjectedMessage] {
        var out: [InjectedMessage] = []
        out.reserveCapacity(messageCount)
        for i in 0..<messageCount { out.append(try message(i, limits: limits, boundary: boundary)) }
        return out
    }

    // MARK: - Checks

    static func mailbox(_ text: String, field: String) throws(InjectionError) -> Mailbox {
        switch AddressParser.parseMailbox(Substring(text), allowUTF8: true) {
        case .success(let m): return m
        case .failure(.syntax(let why)), .failure(.tooLong(let why)): throw InjectionError(field: field, "not a valid address: \(why)")
        case .failure(.nonASCII): throw InjectionError(field: field, "not a valid address: not ASCII")
        }
    }

    static func optionalString(_ v: Any?, field: String) throws(InjectionError) -> String? {
        guard let v, !(v is NSNull) else { return nil }
        guard let s = v as? String else { throw InjectionError(field: field, "must be a string") }
        return s
    }

    static func substitutionMap(_ v: Any?, field: String) throws(InjectionError) -> [String: String] {
        guard let v, !(v is NSNull) else { return [:] }
        guard let o = v as? [String: Any] else { throw InjectionError(field: field, "must be an object of names to values") }
        var out: [String: String] = [:]
        for (k, value) in o {
            guard isVariableName(k) else { throw InjectionError(field: "\(field).\(k)", "a name is letters, digits and _") }
            switch value {
            case let s as String: out[k] = s
            case let n as NSNumber where !isJSONBool(n): out[k] = n.stringValue
            default: throw InjectionError(field: "\(field).\(k)", "must be a string or a number")
            }
        }
        return out
    }

    /// JSON's true and false arrive as NSNumbers of their own class.
    static func isJSONBool(_ v: Any) -> Bool { type(of: v) == type(of: NSNumber(value: true)) }

    static func isVariableName(_ s: String) -> Bool {
        !s.isEmpty && s.utf8.count <= 64 && s.utf8.allSatisfy { $0 == UInt8(ascii: "_") || ($0 < 0x80 && (isalnum(Int32($0)) != 0)) }
    }

    static func person(_ v: Any?, field: String) throws(InjectionError) -> (email: String, name: String?)? {
        guard let v, !(v is NSNull) else { return nil }
        if let s = v as? String { return (email: try mailbox(s, field: field).address, name: nil) }
        guard let o = v as? [String: Any] else { throw InjectionError(field: field, "must be an address or an object with email and name") }
        if let stray = o.keys.sorted().first(where: { $0 != "email" && $0 != "name" }) { throw InjectionError(field: "\(field).\(stray)", "unknown field") }
        guard let email = o["email"] as? String else { throw InjectionError(field: "\(field).email", "required, a string") }
        return (email: try mailbox(email, field: "\(field).email").address, name: try optionalString(o["name"], field: "\(field).name"))
    }

    static func simple(_ o: [String: Any]) throws(InjectionError) -> SimpleContent {
        let known: Set = ["from", "subject", "text_body", "html_body", "reply_to", "headers", "attachments"]
        if let stray = o.keys.sorted().first(where: { !known.contains($0) }) {
            throw InjectionError(field: "content.\(stray)", "unknown field (expected \(known.sorted().joined(separator: ", ")))")
        }
        guard let from = try person(o["from"], field: "content.from") else { throw InjectionError(field: "content.from", "required") }
        var s = SimpleContent(from: from, subject: try optionalString(o["subject"], field: "content.subject"),
                              text: try optionalString(o["text_body"], field: "content.text_body"),
                              html: try optionalString(o["html_body"], field: "content.html_body"),
                              replyTo: try person(o["reply_to"], field: "content.reply_to"))
        guard s.text != nil || s.html != nil else { throw InjectionError(field: "content.text_body", "text_body or html_body is required") }
        if let h = o["headers"], !(h is NSNull) {
            guard let headers = h as? [String: Any] else { throw InjectionError(field: "content.headers", "must be an object of names to values") }
            for name in headers.keys.sorted() {
                let field = "content.headers.\(name)"
                guard !name.isEmpty, name.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F && $0 != UInt8(ascii: ":") }) else {
                    throw InjectionError(field: field, "not a header field name (RFC 5322 §3.6.8)")
                }
                guard let value = headers[name] as? String else { throw InjectionError(field: field, "must be a string") }
                guard !value.unicodeScalars.contains(where: { $0 == "\r" || $0 == "\n" }) else { throw InjectionError(field: field, "must be one line") }
                let lower = name.lowercased()
                guard !["content-type", "content-transfer-encoding", "mime-version"].contains(lower) else {
                    throw InjectionError(field: field, "set by the MIME structure Tern builds")
                }
                s.headers.append((name, value))
            }
        }
        if let a = o["attachments"], !(a is NSNull) {
            guard let list = a as? [Any] else { throw InjectionError(field: "content.attachments", "must be an array") }
            for (i, item) in list.enumerated() {
                let field = "content.attachments[\(i)]"
                guard let att = item as? [String: Any] else { throw InjectionError(field: field, "must be an object") }
                if let stray = att.keys.sorted().first(where: { !["file_name", "content_type", "data", "base64"].contains($0) }) {
                    throw InjectionError(field: "\(field).\(stray)", "unknown field")
                }
                guard let data = att["data"] as? String else { throw InjectionError(field: "\(field).data", "required, a string") }
                if let b = att["base64"], !isJSONBool(b) { throw InjectionError(field: "\(field).base64", "must be true or false") }
                let isBase64 = (att["base64"] as? Bool) ?? false
                let bytes: [UInt8]
                if isBase64 {
                    guard let d = Data(base64Encoded: data, options: .ignoreUnknownCharacters) else {
                        throw InjectionError(field: "\(field).data", "not valid base64")
                    }
                    bytes = Array(d)
                } else {
                    bytes = Array(data.utf8)
                }
                let type = try optionalString(att["content_type"], field: "\(field).content_type") ?? "application/octet-stream"
                guard type.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }), type.contains("/") else {
                    throw InjectionError(field: "\(field).content_type", "not a media type (type/subtype)")
                }
                let fileName = try optionalString(att["file_name"], field: "\(field).file_name")
                s.attachments.append(InjectionAttachment(fileName: fileName, contentType: type, data: bytes))
            }
        }
        return s
    }

    /// CRLF line ends (a bare LF or CR becomes CRLF), lines within the
    /// limit, a From: field, and the size limit.
    static func normalized(_ text: String, limits: InjectionLimits) throws(InjectionError) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(text.utf8.count + 64)
        let bytes = Array(text.utf8)
        var line = 0
        var i = 0
        while i < bytes.count {
            let b = bytes[i]
            i += 1
            if b == 10 || b == 13 {
                if b == 13, i < bytes.count, bytes[i] == 10 { i += 1 }
                out += [13, 10]
                line = 0
                continue
            }
            guard b != 0 else { throw InjectionError(field: "content", "contains a NUL byte") }
            out.append(b)
            line += 1
            guard line <= limits.maxLine else { throw InjectionError(field: "content", "a line is longer than \(limits.maxLine) bytes") }
        }
        if out.count >= 2, out.suffix(2) != [13, 10] { out += [13, 10] }
        guard out.count <= limits.maxMessageSize else {
            throw InjectionError(413, field: "content", "the message is \(out.count) bytes; the limit is \(limits.maxMessageSize)")
        }
        // The header must carry From: (RFC 5322 §3.6: Date and Message-ID are added if missing).
        var hasFrom = false
        var start = 0
        while start < out.count {
            var end = start
            while end + 1 < out.count, !(out[end] == 13 && out[end + 1] == 10) { end += 1 }
            if end == start { break } // the empty line
            let fieldLine = out[start..<end]
            if fieldLine.first != 32, fieldLine.first != 9 {
                guard let colon = fieldLine.firstIndex(of: UInt8(ascii: ":")), colon > start,
                      out[start..<colon].allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
                    throw InjectionError(field: "content", "the header has a line that is not a field (\"Name: value\"); is the empty line before the body missing?")
                }
                if String(decoding: out[start..<colon], as: UTF8.self).lowercased() == "from" { hasFrom = true }
            }
            start = end + 2
        }
        guard hasFrom else { throw InjectionError(field: "content", "the message has no From: header field") }
        return out
    }

    // MARK: - Building

    /// `{{ name }}` → the value (missing: nothing). In a header field line breaks become spaces.
    static func substitute(_ text: String, _ values: [String: String], header: Bool) -> String {
        guard text.contains("{{") else { return text }
        var out = ""
        var rest = Substring(text)
        while let open = rest.range(of: "{{") {
            out += rest[..<open.lowerBound]
            guard let close = rest[open.upperBound...].range(of: "}}") else {
                rest = rest[open.lowerBound...]
                break
            }
            let name = rest[open.upperBound..<close.lowerBound].trimmingCharacters(in: .whitespaces)
            if isVariableName(name) {
                let value = values[name] ?? ""
                out += header ? MIME.oneLine(value) : value
            } else {
                out += rest[open.lowerBound..<close.upperBound]
            }
            rest = rest[close.upperBound...]
        }
        return out + rest
    }

    func build(_ s: SimpleContent, for r: InjectionRecipient, values: [String: String], boundary: String) -> String {
        func sub(_ t: String, header: Bool = true) -> String { InjectionRequest.substitute(t, values, header: header) }
        let userNames = Set(s.headers.map { $0.0.lowercased() })
        var head = ""
        func field(_ name: String, _ value: String) {
            guard !userNames.contains(name.lowercased()) else { return }
            head += "\(name): \(value)\r\n"
        }
        field("From", MIME.address(s.from.email, name: s.from.name.map { sub($0) }))
        field("To", MIME.address(r.mailbox.address, name: r.name))
        if let subject = s.subject { field("Subject", MIME.encodedWords(sub(subject), offset: 9)) }
        if let reply = s.replyTo { field("Reply-To", MIME.address(reply.email, name: reply.name.map { sub($0) })) }
        for (name, value) in s.headers { head += "\(name): \(MIME.encodedWords(sub(value), offset: name.utf8.count + 2))\r\n" }
        head += "MIME-Version: 1.0\r\n"
        let text = s.text.map { MIME.part(type: "text/plain; charset=utf-8", sub($0, header: false)) }
        let html = s.html.map { MIME.part(type: "text/html; charset=utf-8", sub($0, header: false)) }
        var body: String
        switch (text, html) {
        case let (t?, h?): body = MIME.multipart("alternative", [t, h], boundary: boundary + "a")
        case let (t?, nil): body = t
        case let (nil, h?): body = h
        case (nil, nil): body = MIME.part(type: "text/plain; charset=utf-8", "")
        }
        if !s.attachments.isEmpty {
            body = MIME.multipart("mixed", [body] + s.attachments.map(MIME.attachment), boundary: boundary + "m")
        }
        return head + body
    }

    public static func randomBoundary() -> String {
        var rng = SystemRandomNumberGenerator()
        return "=_tern_" + (0..<12).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &rng)) }.joined()
    }
}

/// The few MIME forms the simple content needs (RFC 2045-2047, RFC 2183).
enum MIME {
    /// Line breaks (CR, LF, CRLF: scalars, not characters) become spaces: a value put into a header field stays in it.
    static func oneLine(_ s: String) -> String {
        guard s.unicodeScalars.contains(where: { $0 == "\r" || $0 == "\n" }) else { return s }
        var out = String.UnicodeScalarView()
        for u in s.unicodeScalars { out.append(u == "\r" || u == "\n" ? " " : u) }
        return String(out)
    }

    /// A whole part: its header fields and its body, quoted-printable.
    static func part(type: String, _ text: String) -> String {
        "Content-Type: \(type)\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n" + quotedPrintable(Array(text.utf8))
    }

    static func multipart(_ subtype: String, _ parts: [String], boundary: String) -> String {
        var out = "Content-Type: multipart/\(subtype); boundary=\"\(boundary)\"\r\n\r\n"
        for p in parts { out += "--\(boundary)\r\n" + p + (p.hasSuffix("\r\n") ? "" : "\r\n") }
        return out + "--\(boundary)--\r\n"
    }

    static func attachment(_ a: InjectionAttachment) -> String {
        var out = "Content-Type: \(a.contentType)"
        if let name = a.fileName { out += "; name=\(parameter(name))" }
        out += "\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment"
        if let name = a.fileName { out += "; filename=\(parameter(name))" }
        out += "\r\n\r\n"
        let b64 = Data(a.data).base64EncodedString()
        var i = b64.startIndex
        while i < b64.endIndex {
            let j = b64.index(i, offsetBy: 76, limitedBy: b64.endIndex) ?? b64.endIndex
            out += b64[i..<j] + "\r\n"
            i = j
        }
        return out
    }

    /// A parameter value: a quoted string for ASCII, RFC 2231 would be
    /// better for the rest; an encoded word is what mail clients read.
    static func parameter(_ v: String) -> String {
        let clean = oneLine(v)
        if clean.unicodeScalars.allSatisfy({ $0.isASCII && $0.value >= 0x20 }) {
            return "\"" + clean.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
        }
        return "\"" + encodedWords(clean, offset: 0) + "\""
    }

    /// `Name <addr>`: the name as is (atoms), quoted, or encoded words (not ASCII).
    static func address(_ email: String, name: String?) -> String {
        guard let raw = name.map(oneLine), !raw.isEmpty else { return "<\(email)>" }
        let atext = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~ ")
        let shown: String
        if raw.allSatisfy({ atext.contains($0) }) {
            shown = raw
        } else if raw.unicodeScalars.allSatisfy({ $0.isASCII && $0.value >= 0x20 && $0.value < 0x7F }) {
            shown = "\"" + raw.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
        } else {
            shown = encodedWords(raw, offset: 0)
        }
        return "\(shown) <\(email)>"
    }

    /// The value as is when it is printable ASCII and short enough, else
    /// RFC 2047 "B" encoded words of at most 75 characters, folded.
    static func encodedWords(_ value: String, offset: Int) -> String {
        let printable = value.unicodeScalars.allSatisfy { $0.isASCII && ($0.value >= 0x20 && $0.value < 0x7F || $0 == "\t") }
        if printable && !value.contains("=?") && offset + value.utf8.count <= 78 { return value }
        if printable && !value.contains("=?") {
            return fold(value, offset: offset)
        }
        // Whole characters per word: 45 bytes of UTF-8 make 60 of base64, 72 with "=?utf-8?b?" and "?=".
        var words: [String] = []
        var chunk: [UInt8] = []
        for ch in value {
            let bytes = Array(String(ch).utf8)
            if chunk.count + bytes.count > 45, !chunk.isEmpty {
                words.append("=?utf-8?b?" + Data(chunk).base64EncodedString() + "?=")
                chunk = []
            }
            chunk += bytes
        }
        if !chunk.isEmpty { words.append("=?utf-8?b?" + Data(chunk).base64EncodedString() + "?=") }
        return words.joined(separator: "\r\n ")
    }

    /// Folds a printable value at spaces so that lines stay near 78 (RFC 5322 §2.2.3).
    static func fold(_ value: String, offset: Int) -> String {
        var out = ""
        var width = offset
        for (i, word) in value.split(separator: " ", omittingEmptySubsequences: false).enumerated() {
            if i > 0 {
                if width + 1 + word.utf8.count > 78 && width > 1 {
                    out += "\r\n "
                    width = 1
                } else {
                    out += " "
                    width += 1
                }
            }
            out += word
            width += word.utf8.count
        }
        return out
    }

    /// RFC 2045 §6.7: line breaks (LF or CRLF) stay hard breaks; lines of at
    /// most 76 characters with soft breaks; `=`, controls, 8-bit bytes and
    /// white space at a line's end encoded.
    static func quotedPrintable(_ bytes: [UInt8]) -> String {
        let hex = Array("0123456789ABCDEF".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count + bytes.count / 8 + 8)
        var width = 0
        func emit(_ piece: [UInt8]) {
            if width + piece.count > 75 {
                out += [UInt8(ascii: "="), 13, 10]
                width = 0
            }
            out += piece
            width += piece.count
        }
        var i = 0
        while i < bytes.count {
            let b = bytes[i]
            if b == 10 || (b == 13 && i + 1 < bytes.count && bytes[i + 1] == 10) {
                out += [13, 10]
                width = 0
                i += b == 13 ? 2 : 1
                continue
            }
            let atLineEnd = i + 1 == bytes.count || bytes[i + 1] == 10 || bytes[i + 1] == 13
            let literal = (b >= 33 && b <= 126 && b != UInt8(ascii: "=")) || ((b == 32 || b == 9) && !atLineEnd)
            // A "." at a line's start needs nothing: the SMTP client stuffs dots.
            if literal {
                emit([b])
            } else {
                emit([UInt8(ascii: "="), hex[Int(b >> 4)], hex[Int(b & 15)]])
            }
            i += 1
        }
        if out.last != 10 { out += [13, 10] }
        return String(decoding: out, as: UTF8.self)
    }
}
