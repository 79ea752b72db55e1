// Positional binding straight through SQLite's C API, for the few statements
// that run once or more per message on the writer (intake, outcomes). GRDB's
// StatementArguments build a dictionary of boxed values per execution; on
// the 20-session bench that, with GRDB's per-execution checks, cost more of
// the single writer thread than SQLite's own work for these rows. Only for
// cached statements inside group commit: no transaction observers, no
// region tracking are needed there, and errors come back as GRDB's
// DatabaseError so that StoreError.classify treats them alike.

import Foundation
import GRDB
import GRDBSQLite

/// SQLite copies the bytes before the bind call returns (SQLITE_TRANSIENT).
private let transient = unsafeBitCast(-1, to: sqlite3_destructor_type.self)

struct DirectStatement {
    private let statement: Statement
    private let handle: OpaquePointer
    private var index: Int32 = 0

    /// Resets the statement for a new execution (its old bindings are all replaced).
    init(_ statement: Statement) {
        self.statement = statement
        self.handle = statement.sqliteStatement
        sqlite3_reset(handle)
    }

    mutating func bind(_ value: Int64?) {
        index += 1
        if let value { sqlite3_bind_int64(handle, index, value) } else { sqlite3_bind_null(handle, index) }
    }

    mutating func bind(_ value: Int?) { bind(value.map(Int64.init)) }

    mutating func bind(_ value: Bool) { bind(Int64(value ? 1 : 0)) }

    mutating func bind(_ value: String?) {
        index += 1
        guard let value else { sqlite3_bind_null(handle, index); return }
        let count = Int32(value.utf8.count)
        _ = value.withCString { sqlite3_bind_text(handle, index, $0, count, transient) }
    }

    mutating func bind(_ value: Data?) {
        index += 1
        guard let value else { sqlite3_bind_null(handle, index); return }
        if value.isEmpty { sqlite3_bind_zeroblob(handle, index, 0); return }
        _ = value.withUnsafeBytes { sqlite3_bind_blob(handle, index, $0.baseAddress, Int32($0.count), transient) }
    }

    /// A blob of `count` zero bytes, to be written in place afterwards.
    mutating func bindZeroBlob(_ count: Int) {
        index += 1
        sqlite3_bind_zeroblob(handle, index, Int32(count))
    }

    /// Runs it to the end.
    func execute(_ db: Database) throws {
        var code = sqlite3_step(handle)
        while code == SQLITE_ROW { code = sqlite3_step(handle) }
        try finish(code, db)
    }

    /// Runs it and returns the first row's columns as read by `read` (a
    /// SELECT or RETURNING), nil when there is no row.
    func executeReturning<T>(_ db: Database, _ read: (Columns) -> T) throws -> T? {
        var code = sqlite3_step(handle)
        var result: T? = nil
        if code == SQLITE_ROW {
            result = read(Columns(handle: handle))
            while code == SQLITE_ROW { code = sqlite3_step(handle) }
        }
        try finish(code, db)
        return result
    }

    private func finish(_ code: Int32, _ db: Database) throws {
        guard code == SQLITE_DONE else {
            let extended = sqlite3_extended_errcode(db.sqliteConnection)
            let message = String(cString: sqlite3_errmsg(db.sqliteConnection))
            sqlite3_reset(handle)
            throw DatabaseError(resultCode: ResultCode(rawValue: extended), message: message, sql: statement.sql)
        }
        sqlite3_reset(handle)
    }

    /// The current row of a stepping statement.
    struct Columns {
        let handle: OpaquePointer
        func int64(_ i: Int32) -> Int64? {
            sqlite3_column_type(handle, i) == SQLITE_NULL ? nil : sqlite3_column_int64(handle, i)
        }
        func string(_ i: Int32) -> String? {
            guard let p = sqlite3_column_text(handle, i) else { return nil }
            return String(cString: p)
        }
    }
}
