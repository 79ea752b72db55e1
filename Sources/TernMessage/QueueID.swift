// Queue ids: short, unique, sortable by time, safe in a reply and a file name.
// 10 characters of millisecond time and 6 of randomness and a per-process
// counter, in Crockford base32 (no I, L, O, U), like `01JD8K3ZQ4X7M2PA`.

import Synchronization

public enum QueueID {
    static let alphabet = Array("0123456789ABCDEFGHJKMNPQRSTVWXYZ".utf8)
    static let counter = Atomic<UInt32>(0)
    static let salt = UInt32.random(in: 0...UInt32.max)

    public static func make(millis: Int64) -> String {
        var out = [UInt8](repeating: 0, count: 16)
        var t = UInt64(max(0, millis))
        for i in stride(from: 9, through: 0, by: -1) {
            out[i] = alphabet[Int(t & 31)]
            t >>= 5
        }
        // 30 bits: the counter (unique within this process) mixed with a
        // per-process salt (unique across processes sharing the database).
        let n = counter.wrappingAdd(1, ordering: .relaxed).newValue
        var r = UInt64((n &* 2654435761) ^ salt) & 0x3FFF_FFFF
        for i in stride(from: 15, through: 10, by: -1) {
            out[i] = alphabet[Int(r & 31)]
            r >>= 5
        }
        return String(decoding: out, as: UTF8.self)
    }
}
