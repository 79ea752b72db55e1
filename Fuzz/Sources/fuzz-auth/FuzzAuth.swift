// The parsers of email authentication over hostile text (a TXT record is
// whatever a sender's DNS says; a DKIM-Signature is whatever a sender
// writes). Invariants: no crash; a record parses or gives a reason; an
// SPF record that parses keeps every term it read; a DKIM tag list never
// holds a tag twice; removing b='s value never grows a field and leaves it
// a field; a DMARC record's pct= is within 0...100; From: domains are
// non-empty and without whitespace.

import TernMailAuthParsers

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzAuth(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    let text = String(decoding: bytes, as: UTF8.self)

    // SPF: the record as TXT bytes, and as the text after "v=spf1 ".
    for record in [bytes, Array("v=spf1 ".utf8) + bytes] {
        do {
            let r = try SPFRecord.parse(record)
            precondition(SPFRecord.isSPF(record) || !record.starts(with: Array("v=spf1 ".utf8)))
            let terms = max(0, String(decoding: record, as: UTF8.self).split(separator: " ").count - 1)
            precondition(r.mechanismTexts.count <= terms, "more mechanisms than terms")
            precondition(r.mechanismTexts.allSatisfy { !$0.isEmpty })
        } catch {
            precondition(!error.reason.isEmpty)
        }
    }

    // DKIM tag lists and b= removal.
    if let tags = DKIMTagList.parse(bytes[...]) {
        precondition(tags.keys.allSatisfy { !$0.isEmpty })
    }
    let field = Array("DKIM-Signature:".utf8) + bytes + [13, 10]
    let emptied = DKIMTagList.emptyingB(field)
    precondition(emptied.count <= field.count, "b= removal grew the field")
    precondition(emptied.starts(with: Array("DKIM-Signature:".utf8)))

    // DMARC records.
    if case .success(let r)? = DMARCRecord.parse(text) {
        precondition((0...100).contains(r.percent))
    }
    if case .success(let r)? = DMARCRecord.parse("v=DMARC1; " + text) {
        precondition((0...100).contains(r.percent))
    }

    // From: address lists.
    for d in addressDomains(text) {
        precondition(!d.isEmpty && !d.contains(where: \.isWhitespace), "bad domain \(d)")
    }
    _ = fromDomains(Array("From: ".utf8) + bytes + Array("\r\n\r\nbody\r\n".utf8))
    return 0
}
