// The store's faults, classified so that callers can answer SMTP clients
// correctly (452 4.3.1 for a full disk, 451 4.3.0 for anything else).

import GRDB

public enum StoreError: Error, Sendable, Equatable, CustomStringConvertible {
    /// SQLITE_FULL: the disk or `max_page_count` is exhausted.
    case full(String)
    /// SQLITE_IOERR and friends.
    case io(String)
    /// The database stayed locked past the busy timeout.
    case busy(String)
    /// The database was made by a newer Tern.
    case schemaTooNew(found: Int, known: Int)
    /// The store was closed.
    case closed
    case constraint(String)
    case other(String)

    public var description: String {
        switch self {
        case .full(let s): return "storage full: \(s)"
        case .io(let s): return "I/O error: \(s)"
        case .busy(let s): return "database busy: \(s)"
        case .schemaTooNew(let found, let known):
            return "database schema version \(found) is newer than this tern knows (\(known)); upgrade tern"
        case .closed: return "store closed"
        case .constraint(let s): return "constraint failed: \(s)"
        case .other(let s): return s
        }
    }

    static func classify(_ error: Error) -> StoreError {
        if let e = error as? StoreError { return e }
        if let e = error as? DatabaseError {
            let text = e.message ?? "\(e)"
            switch e.resultCode {
            case .SQLITE_FULL: return .full(text)
            case .SQLITE_IOERR, .SQLITE_CORRUPT, .SQLITE_CANTOPEN, .SQLITE_NOTADB, .SQLITE_READONLY: return .io(text)
            case .SQLITE_BUSY, .SQLITE_LOCKED: return .busy(text)
            case .SQLITE_CONSTRAINT: return .constraint(text)
            default: return .other(text)
            }
        }
        return .other("\(error)")
    }
}
