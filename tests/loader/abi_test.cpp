// The kernel ABI check: the embedded BPF objects and this binary agree on the record layouts of
// bpf/closetrace.h, and the loader refuses an object that does not.
#include <gtest/gtest.h>

#include "tracer.h"

extern "C" {
#include "closetrace.h"
}

namespace closetrace {
namespace {

TEST(KernelAbi, ObjectsBuiltWithThisBinarysVersionAreAccepted) {
    EXPECT_EQ(abi_mismatch(CT_ABI_VERSION), std::nullopt);
}

TEST(KernelAbi, ObjectsOfAnotherVersionAreRefusedWithWhatToDo) {
    for (const uint32_t other : {0u, CT_ABI_VERSION - 1u, CT_ABI_VERSION + 1u}) {
        const auto refusal = abi_mismatch(other);
        ASSERT_TRUE(refusal.has_value()) << other;
        EXPECT_NE(refusal->find("rebuild"), std::string::npos) << *refusal;
        EXPECT_NE(refusal->find("disagree"), std::string::npos) << *refusal;
        EXPECT_EQ(refusal->find('\n'), std::string::npos) << *refusal;
    }
}

TEST(KernelAbi, EmbeddedObjectsCarryTheHeadersVersion) {
    const std::vector<uint32_t> versions = embedded_abi_versions();
    ASSERT_EQ(versions.size(), 2u);
    for (const uint32_t version : versions) EXPECT_EQ(version, uint32_t{CT_ABI_VERSION});
}

}  // namespace
}  // namespace closetrace
