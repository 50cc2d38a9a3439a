// The C library, once for every module that imports this one: the POSIX calls the engine makes
// (mmap, pread, pthreads, madvise) need it, and 33 files each carried the same import preamble.
#if canImport(Glibc)
@_exported import Glibc
#elseif canImport(Musl)
@_exported import Musl
#elseif canImport(Darwin)
@_exported import Darwin
#endif

/// The text of the C library's message for `errno`.
public func errorText(_ code: Int32 = errno) -> String {
    String(cString: strerror(code))
}
