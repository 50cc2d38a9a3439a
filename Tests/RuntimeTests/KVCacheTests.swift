import Kernels
import Runtime
import SwitchyardSupport
import Testing

@Suite("KV cache")
struct KVCacheTests {
    let layout = KVLayout(layers: 3, keyWidth: 4, valueWidth: 4)

    @Test func bytesComeFromTheLayout() {
        #expect(layout.bytesPerPosition == 3 * 8 * 4)
        #expect(layout.bytes(positions: 10) == 960)
        // A latent cache stores no values.
        #expect(KVLayout(layers: 2, keyWidth: 576, valueWidth: 0).bytesPerPosition == 2 * 576 * 4)
    }

    @Test func sequencesReserveAppendTruncateAndFree() throws {
        let cache = LocalKVCache(layout: layout, budget: layout.bytes(positions: 10))
        let a = try cache.reserve(capacity: 6)
        #expect(throws: KVCacheError.self) { try cache.reserve(capacity: 5) }
        let b = try cache.reserve(capacity: 4)
        #expect(cache.bytesInUse == layout.bytes(positions: 10))
        let keys: [Float] = (0..<8).map(Float.init), values: [Float] = (0..<8).map { Float($0) + 100 }
        cache.append(a, layer: 2, position: 0, keys: keys, values: values, count: 2)
        cache.advance(a, by: 2)
        #expect(cache.length(of: a) == 2 && cache.length(of: b) == 0 && cache.capacity(of: a) == 6)
        let rows = cache.rows(of: a, layer: 2)
        #expect(Array(UnsafeBufferPointer(start: rows.keys.assumingMemoryBound(to: Float.self), count: 8)) == keys)
        #expect(Array(UnsafeBufferPointer(start: rows.values.assumingMemoryBound(to: Float.self), count: 8)) == values)
        cache.truncate(a, to: 1)
        #expect(cache.length(of: a) == 1)
        cache.truncate(a, to: 5)
        #expect(cache.length(of: a) == 1, "truncating never lengthens")
        cache.free(a)
        #expect(cache.bytesInUse == layout.bytes(positions: 4))
        #expect(try cache.reserve(capacity: 6).value > b.value, "freed memory is reserved again under a new id")
        #expect(throws: KVCacheError.self) { try cache.reserve(capacity: 0) }
    }
}

@Suite("tiers")
struct TierTests {
    @Test func fastestFirst() {
        #expect(Tier.allCases.sorted() == [.accelerator, .ram, .disk, .remote])
        #expect(Tier.accelerator < .disk)
    }

    @Test func rowsOfAnAcceleratorMatrixKeepTheirLocation() {
        let base = UnsafeMutableRawPointer.allocate(byteCount: 4 * 8 * 2, alignment: 64)
        defer { base.deallocate() }
        let m = WeightMatrix(element: .bf16, rows: 4, columns: 8, data: base, location: .accelerator(offset: 128))
        let tail = m.rows(2..<4)
        #expect(tail.location == .accelerator(offset: 128 + 2 * 16) && tail.data == UnsafeRawPointer(base + 32) && tail.byteCount == 32)
        #expect(WeightMatrix(element: .f32, rows: 1, columns: 4, data: base).rows(0..<1).location == .host)
    }
}
