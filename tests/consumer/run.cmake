# The consumer test (cmake -P run.cmake): install ftm from the build tree into a
# scratch prefix, then configure, build and run tests/consumer against it with the
# same generator and compiler.
#
#   FTM_BINARY_DIR           the ftm build tree to install from
#   FTM_CONSUMER_SOURCE_DIR  tests/consumer
#   FTM_WORK_DIR             scratch directory (wiped first)
#   FTM_GENERATOR, FTM_MAKE_PROGRAM, FTM_CXX_COMPILER, FTM_CONFIG   as in the ftm build

foreach(var FTM_BINARY_DIR FTM_CONSUMER_SOURCE_DIR FTM_WORK_DIR FTM_GENERATOR FTM_CXX_COMPILER)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "run.cmake: ${var} is not set")
  endif()
endforeach()
if(NOT FTM_CONFIG)
  set(FTM_CONFIG Release)
endif()

set(prefix "${FTM_WORK_DIR}/prefix")
set(build "${FTM_WORK_DIR}/build")
file(REMOVE_RECURSE "${FTM_WORK_DIR}")

function(step what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE result)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "consumer test: ${what} failed (${result})")
  endif()
endfunction()

step("installing ftm into ${prefix}"
  "${CMAKE_COMMAND}" --install "${FTM_BINARY_DIR}" --prefix "${prefix}" --config "${FTM_CONFIG}")

set(configure "${CMAKE_COMMAND}"
  -S "${FTM_CONSUMER_SOURCE_DIR}" -B "${build}"
  -G "${FTM_GENERATOR}"
  "-DCMAKE_CXX_COMPILER=${FTM_CXX_COMPILER}"
  "-DCMAKE_BUILD_TYPE=${FTM_CONFIG}"
  "-DCMAKE_PREFIX_PATH=${prefix}"
  "-DFTM_EXPECTED_PREFIX=${prefix}"
  # Only the scratch prefix may provide ftm.
  -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF
  -DCMAKE_FIND_PACKAGE_NO_PACKAGE_REGISTRY=ON)
if(FTM_MAKE_PROGRAM)
  list(APPEND configure "-DCMAKE_MAKE_PROGRAM=${FTM_MAKE_PROGRAM}")
endif()
step("configuring the consumer" ${configure})
step("building the consumer" "${CMAKE_COMMAND}" --build "${build}" --config "${FTM_CONFIG}")

set(consumer "${build}/ftm_consumer")
if(NOT EXISTS "${consumer}")
  set(consumer "${build}/${FTM_CONFIG}/ftm_consumer")  # multi-config generators
endif()
step("running the consumer" "${consumer}")
message(STATUS "consumer test: built and ran against ${prefix}")
