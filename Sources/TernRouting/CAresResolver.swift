// The production Resolver: c-ares (Debian libc-ares-dev) on a dedicated
// thread, off every event loop. Queries are queued under a lock and the
// thread is woken through an eventfd; its wait loop uses poll(2) (c-ares's
// select-based helpers break past FD_SETSIZE). `servers` points it at
// specific servers (`--resolver HOST:PORT`); without it c-ares reads the
// system's /etc/resolv.conf.

import CAres
import Foundation
import Synchronization
import TernMetrics
import TernProtocol
#if canImport(Glibc)
import Glibc
#endif

public final class CAresResolver: DNSResolver, AuthDNS, @unchecked Sendable {
    // C_IN and the RR types (RFC 1035, RFC 3596).
    static let classIN: Int32 = 1
    static let typeA: Int32 = 1
    static let typeAAAA: Int32 = 28

    struct Query {
        let name: String
        let type: Int32
        let done: @Sendable (Int32, [UInt8]?) -> Void
    }

    final class QueryBox {
        let query: Query
        init(_ q: Query) { query = q }
    }

    struct Shared: ~Copyable {
        var pending: [Query] = []
        var stopped = false
    }

    private let shared = Mutex(Shared())
    private let wakeFD: Int32
    // Touched only by the resolver thread after init.
    private var channel: ares_channel? = nil
    private var thread: Thread? = nil
    private let finished = DispatchSemaphore(value: 0)

    /// - Parameter servers: `host:port` entries (`[::1]:53` for IPv6); nil for the system's.
    public init(servers: [String]? = nil, timeoutMillis: Int32 = 2000, tries: Int32 = 2) throws {
        _ = CAresResolver.libraryInit
        var opts = ares_options()
        opts.timeout = timeoutMillis
        opts.tries = tries
        var ch: ares_channel? = nil
        let rc = ares_init_options(&ch, &opts, ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES)
        guard rc == ARES_SUCCESS, let ch else { throw ResolverError.setup("ares_init_options: \(String(cString: ares_strerror(rc)))") }
        if let servers, !servers.isEmpty {
            let src = ares_set_servers_ports_csv(ch, servers.joined(separator: ","))
            guard src == ARES_SUCCESS else {
                ares_destroy(ch)
                throw ResolverError.setup("bad resolver address \(servers.joined(separator: ",")): \(String(cString: ares_strerror(src)))")
            }
        }
        channel = ch
        wakeFD = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
        let t = Thread { [unowned self] in self.loop() }
        t.name = "tern.dns"
        thread = t
        t.start()
    }

    static let libraryInit: Int32 = ares_library_init(ARES_LIB_INIT_ALL)

    /// Stops the thread; outstanding queries end as temporary failures.
    public func shutdown() {
        let already = shared.withLock { s -> Bool in
            defer { s.stopped = true }
            return s.stopped
        }
        if already { return }
        wake()
        finished.wait()
    }

    deinit { shutdown() }

    private func wake() {
        var one: UInt64 = 1
        _ = write(wakeFD, &one, 8)
    }

    func query(_ name: String, type: Int32) async -> (Int32, [UInt8]?) {
        let (status, data) = await ask(name, type: type)
        TernMetrics.dnsLookup(type: CAresResolver.typeName(type), result: CAresResolver.resultName(status))
        return (status, data)
    }

    /// Bounded label values for the metrics.
    static func typeName(_ type: Int32) -> String {
        DNSRecordType(rawValue: UInt16(clamping: type)).map { $0.description.lowercased() } ?? "other"
    }

    static func resultName(_ status: Int32) -> String {
        switch status {
        case ARES_SUCCESS: "ok"
        case ARES_ENOTFOUND: "nxdomain"
        case ARES_ENODATA: "none"
        case ARES_ETIMEOUT: "timeout"
        default: "error"
        }
    }

    private func ask(_ name: String, type: Int32) async -> (Int32, [UInt8]?) {
        await withCheckedContinuation { cont in
            let q = Query(name: name, type: type) { status, data in cont.resume(returning: (status, data)) }
            let accepted = shared.withLock { s -> Bool in
                if s.stopped { return false }
                s.pending.append(q)
                return true
            }
            if accepted { wake() } else { cont.resume(returning: (ARES_EDESTRUCTION, nil)) }
        }
    }

    private static let callback: ares_callback = { arg, status, _, abuf, alen in
        let box = Unmanaged<QueryBox>.fromOpaque(arg!).takeRetainedValue()
        let data = abuf.map { Array(UnsafeBufferPointer(start: $0, count: Int(alen))) }
        box.query.done(status, data)
    }

    private func loop() {
        let maxSockets = 16 // ARES_GETSOCK_MAXNUM
        var sockets = [ares_socket_t](repeating: -1, count: maxSockets)
        while true {
            let (queries, stopped) = shared.withLock { s -> ([Query], Bool) in
                let q = s.pending
                s.pending.removeAll()
                return (q, s.stopped)
            }
            if stopped {
                for q in queries { q.done(ARES_EDESTRUCTION, nil) }
                break
            }
            for q in queries {
                let box = Unmanaged.passRetained(QueryBox(q)).toOpaque()
                ares_query(channel, q.name, CAresResolver.classIN, q.type, CAresResolver.callback, box)
            }
            let bits = Int(ares_getsock(channel, &sockets, Int32(maxSockets)))
            var fds = [pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0)]
            for i in 0..<maxSockets {
                let readable = bits & (1 << i) != 0
                let writable = bits & (1 << (i + maxSockets)) != 0
                if readable || writable {
                    fds.append(pollfd(fd: sockets[i], events: Int16((readable ? POLLIN : 0) | (writable ? POLLOUT : 0)), revents: 0))
                }
            }
            var maxWait = timeval(tv_sec: 1, tv_usec: 0)
            var tv = timeval()
            let next = ares_timeout(channel, &maxWait, &tv)!.pointee
            let timeoutMillis = Int32(next.tv_sec * 1000 + next.tv_usec / 1000)
            _ = poll(&fds, nfds_t(fds.count), fds.count > 1 ? max(1, timeoutMillis) : 1000)
            if fds[0].revents != 0 {
                var counter: UInt64 = 0
                _ = read(wakeFD, &counter, 8)
            }
            var processed = false
            for f in fds.dropFirst() where f.revents != 0 {
                let r = f.revents & Int16(POLLIN | POLLERR | POLLHUP) != 0 ? f.fd : ARES_SOCKET_BAD
                let w = f.revents & Int16(POLLOUT) != 0 ? f.fd : ARES_SOCKET_BAD
                ares_process_fd(channel, r, w)
                processed = true
            }
            if !processed { ares_process_fd(channel, ARES_SOCKET_BAD, ARES_SOCKET_BAD) } // timeouts and retries
        }
        ares_destroy(channel) // calls outstanding callbacks with ARES_EDESTRUCTION
        channel = nil
        close(wakeFD)
        finished.signal()
    }

    static func classify<T>(_ status: Int32) -> DNSAnswer<T>? {
        switch status {
        case ARES_SUCCESS: return nil
        case ARES_ENOTFOUND: return .nxdomain
        case ARES_ENODATA: return .noRecords
        default: return .temporaryFailure(String(cString: ares_strerror(status)))
        }
    }

    /// MX records with the smallest TTL of the set (the answer section is read by `DNSMessage.records`, as for every type).
    public func mx(_ domain: String) async -> DNSAnswer<[MXRecord]> {
        let found = await lookup(domain, .mx)
        return TernRouting.mapped(found.answer) { if case .mx(let p, let h) = $0 { MXRecord(preference: p, host: h, ttl: found.ttl) } else { nil } }
    }

    /// One look-up by type for the authentication checks (AuthDNS), with its TTL.
    public func lookup(_ name: String, _ type: DNSRecordType) async -> DNSLookup {
        let (status, data) = await query(name, type: Int32(type.rawValue))
        if let failure: DNSAnswer<[DNSRData]> = CAresResolver.classify(status) { return DNSLookup(failure) }
        guard let buf = data, let (records, ttl) = DNSMessage.records(buf, type: type) else {
            return DNSLookup(.temporaryFailure("unreadable answer"))
        }
        return DNSLookup(records.isEmpty ? .noRecords : .records(records), ttl: ttl)
    }

    public func addresses(_ host: String) async -> DNSAnswer<[IPAddress]> {
        async let v4 = query(host, type: CAresResolver.typeA)
        async let v6 = query(host, type: CAresResolver.typeAAAA)
        let (a, aaaa) = await (v4, v6)
        var out: [IPAddress] = []
        if a.0 == ARES_SUCCESS, var buf = a.1 {
            var ttls = [ares_addrttl](repeating: ares_addrttl(), count: 32)
            var n: Int32 = 32
            if ares_parse_a_reply(&buf, Int32(buf.count), nil, &ttls, &n) == ARES_SUCCESS {
                for t in ttls.prefix(Int(n)) {
                    let v = UInt32(bigEndian: t.ipaddr.s_addr)
                    out.append(IPAddress(bytes: [UInt8(v >> 24), UInt8(v >> 16 & 0xff), UInt8(v >> 8 & 0xff), UInt8(v & 0xff)]))
                }
            }
        }
        if aaaa.0 == ARES_SUCCESS, var buf = aaaa.1 {
            var ttls = [ares_addr6ttl](repeating: ares_addr6ttl(), count: 32)
            var n: Int32 = 32
            if ares_parse_aaaa_reply(&buf, Int32(buf.count), nil, &ttls, &n) == ARES_SUCCESS {
                for t in ttls.prefix(Int(n)) {
                    var addr = t.ip6addr
                    let bytes = withUnsafeBytes(of: &addr) { Array($0.prefix(16)) }
                    out.append(IPAddress(bytes: bytes))
                }
            }
        }
        if !out.isEmpty { return .records(out) }
        // Both failed: NXDOMAIN wins only when both say so.
        if a.0 == ARES_ENOTFOUND && aaaa.0 == ARES_ENOTFOUND { return .nxdomain }
        let temporary = [a.0, aaaa.0].first { $0 != ARES_SUCCESS && $0 != ARES_ENODATA && $0 != ARES_ENOTFOUND }
        if let t = temporary { return .temporaryFailure(String(cString: ares_strerror(t))) }
        return .noRecords
    }
}

public enum ResolverError: Error, CustomStringConvertible {
    case setup(String)
    public var description: String {
        switch self { case .setup(let s): return "resolver: \(s)" }
    }
}
