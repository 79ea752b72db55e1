// The RFC 5322 header parser. Invariants: no crash; intake's scan
// (firstValue, count) agrees with the full parse.

import TernMessage

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHeaders(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let raw = UnsafeRawBufferPointer(start: data, count: size)
    let block = HeaderBlock(Array(raw))
    for name in ["Message-ID", "Date", "Received", "From"] {
        let scanned = HeaderBlock.firstValue(name, in: raw)
        precondition(scanned == block.first(name), "scan and parse disagree on \(name)")
        precondition(HeaderBlock.count(name, in: raw) == block.all(name).count, "count disagrees on \(name)")
    }
    if let id = block.first("Message-ID") { _ = messageID(fromFieldValue: id) }
    return 0
}
