# The consumer tests (cmake -P run.cmake): use ftm the three ways README.md's
# "Install and use" section shows, with the commands and CMake blocks taken from
# README.md itself, so that the test fails when the README and the project drift.
#
#   install           runs the README's shell commands (configure, build, install) in
#                     the source tree, with the build directory and the prefix moved
#                     to a scratch directory, then builds tests/consumer with the
#                     README's find_package block
#   fetchcontent      builds tests/consumer with the README's FetchContent block, its
#                     GIT_REPOSITORY replaced by a git repository made from a copy of
#                     the source tree (its branch `main`, as GIT_TAG names it)
#   add_subdirectory  builds tests/consumer with the README's add_subdirectory block,
#                     a copy of the source tree in the project's `ftm/`
#
#   nats              builds tests/consumer with nats_main.cpp as its program and the
#                     ```cmake block of docs/nats.md that names `COMPONENTS nats`,
#                     against the prefix the install mode made (FTM_INSTALLED_PREFIX):
#                     the README's commands installed ftm::nats, and it links and runs
#
# In each mode the consumer program runs and must print "ftm consumer: ok".
#
#   FTM_MODE                 install, fetchcontent or add_subdirectory
#   FTM_SOURCE_DIR           the ftm source tree (README.md, CMakeLists.txt)
#   FTM_CONSUMER_SOURCE_DIR  tests/consumer
#   FTM_WORK_DIR             scratch directory (wiped first)
#   FTM_INSTALLED_PREFIX     (nats) the prefix into which the install mode installed ftm
#   FTM_GENERATOR, FTM_MAKE_PROGRAM, FTM_CXX_COMPILER, FTM_CONFIG   as in the ftm build

cmake_policy(VERSION 3.23)  # if() compares quoted words as strings (CMP0054)

foreach(var FTM_MODE FTM_SOURCE_DIR FTM_CONSUMER_SOURCE_DIR FTM_WORK_DIR FTM_GENERATOR
            FTM_CXX_COMPILER)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "run.cmake: ${var} is not set")
  endif()
endforeach()
if(NOT FTM_MODE MATCHES "^(install|fetchcontent|add_subdirectory|nats)$")
  message(FATAL_ERROR "run.cmake: unknown FTM_MODE '${FTM_MODE}'")
endif()
if(NOT FTM_CONFIG)
  set(FTM_CONFIG Release)
endif()

file(REMOVE_RECURSE "${FTM_WORK_DIR}")
file(MAKE_DIRECTORY "${FTM_WORK_DIR}")

function(step what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE result)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "consumer test (${FTM_MODE}): ${what} failed (${result})")
  endif()
endfunction()

# ---- the README's blocks --------------------------------------------------------

file(READ "${FTM_SOURCE_DIR}/README.md" readme)
string(FIND "${readme}" "\n## Install and use\n" at)
if(at EQUAL -1)
  message(FATAL_ERROR "README.md has no '## Install and use' section")
endif()
math(EXPR at "${at} + 1")
string(SUBSTRING "${readme}" ${at} -1 section)
string(FIND "${section}" "\n## " end)  # up to the next section
if(NOT end EQUAL -1)
  string(SUBSTRING "${section}" 0 ${end} section)
endif()
set(section_name "README.md's 'Install and use' section")
if(FTM_MODE STREQUAL "nats")
  # The bridge's block is in docs/nats.md, anywhere in it.
  file(READ "${FTM_SOURCE_DIR}/docs/nats.md" section)
  set(section_name "docs/nats.md")
endif()
# CMake lists split at ';': hide them while the blocks are picked out.
string(REPLACE ";" "<semicolon>" section "${section}")

# Sets `out` to the one ```<lang> block of the section that contains `marker`.
function(readme_block out lang marker)
  string(REGEX MATCHALL "```${lang}\n[^`]*```" blocks "${section}")
  set(found "")
  foreach(block IN LISTS blocks)
    string(FIND "${block}" "${marker}" has)
    if(NOT has EQUAL -1)
      list(APPEND found "${block}")
    endif()
  endforeach()
  list(LENGTH found n)
  if(NOT n EQUAL 1)
    message(FATAL_ERROR "${section_name} has ${n} ```${lang} blocks with '${marker}', not one")
  endif()
  string(REGEX REPLACE "^```${lang}\n" "" found "${found}")
  string(REGEX REPLACE "```$" "" found "${found}")
  string(REPLACE "<semicolon>" ";" found "${found}")
  set(${out} "${found}" PARENT_SCOPE)
endfunction()

# Copies the source tree to `dest`: in a git checkout, the files git lists (tracked,
# and new ones not ignored, as they are now); otherwise every top-level entry but
# .git and build trees (build*/, or any directory with a CMakeCache.txt).
find_program(git git)
function(copy_source dest)
  file(MAKE_DIRECTORY "${dest}")
  set(files "")
  if(git)
    execute_process(COMMAND "${git}" -C "${FTM_SOURCE_DIR}" ls-files --cached --others
                            --exclude-standard
                    RESULT_VARIABLE result OUTPUT_VARIABLE listing ERROR_QUIET)
    if(result EQUAL 0)
      string(REPLACE "\n" ";" files "${listing}")
    endif()
  endif()
  if(files)
    foreach(file IN LISTS files)
      if(file STREQUAL "" OR NOT EXISTS "${FTM_SOURCE_DIR}/${file}"
         OR IS_DIRECTORY "${FTM_SOURCE_DIR}/${file}")
        continue()  # deleted in the work tree, or a submodule
      endif()
      get_filename_component(dir "${dest}/${file}" DIRECTORY)
      file(MAKE_DIRECTORY "${dir}")
      file(COPY_FILE "${FTM_SOURCE_DIR}/${file}" "${dest}/${file}")
    endforeach()
    return()
  endif()
  file(GLOB entries LIST_DIRECTORIES true RELATIVE "${FTM_SOURCE_DIR}" "${FTM_SOURCE_DIR}/*"
       "${FTM_SOURCE_DIR}/.[a-z]*")
  foreach(entry IN LISTS entries)
    set(cache "${FTM_SOURCE_DIR}/${entry}/CMakeCache.txt")
    if(entry STREQUAL ".git" OR entry MATCHES "^build" OR EXISTS "${cache}")
      continue()
    endif()
    file(COPY "${FTM_SOURCE_DIR}/${entry}" DESTINATION "${dest}")
  endforeach()
endfunction()

set(project "${FTM_WORK_DIR}/project")
set(consumer_build "${FTM_WORK_DIR}/build")
file(COPY "${FTM_CONSUMER_SOURCE_DIR}/CMakeLists.txt" DESTINATION "${project}")
if(FTM_MODE STREQUAL "nats")
  file(COPY_FILE "${FTM_CONSUMER_SOURCE_DIR}/nats_main.cpp" "${project}/main.cpp")
else()
  file(COPY "${FTM_CONSUMER_SOURCE_DIR}/main.cpp" DESTINATION "${project}")
endif()

set(consumer_args "")
if(FTM_MODE STREQUAL "install")
  # Each line of the shell block is one cmake command, run from the source tree.
  readme_block(commands sh "cmake --install")
  set(ftm_build "${FTM_WORK_DIR}/ftm-build")
  set(prefix "${FTM_WORK_DIR}/prefix")
  string(REPLACE "\n" ";" lines "${commands}")
  set(ran 0)
  foreach(line IN LISTS lines)
    string(STRIP "${line}" line)
    if(line STREQUAL "" OR line MATCHES "^#")
      continue()
    endif()
    separate_arguments(words UNIX_COMMAND "${line}")
    list(POP_FRONT words program)
    if(NOT program STREQUAL "cmake")
      message(FATAL_ERROR "README.md: '${line}' is not a cmake command")
    endif()
    # The build directory and the prefix go to the scratch directory.
    set(command "${CMAKE_COMMAND}")
    set(previous "")
    set(configure FALSE)
    foreach(word IN LISTS words)
      if(previous MATCHES "^(-B|--build|--install)$" AND word STREQUAL "build")
        set(word "${ftm_build}")
      elseif(previous STREQUAL "--prefix")
        set(word "${prefix}")
      elseif(word STREQUAL "-S")
        set(configure TRUE)
      endif()
      list(APPEND command "${word}")
      set(previous "${word}")
    endforeach()
    if(configure)
      # The generator and compiler of the build under test.
      list(APPEND command -G "${FTM_GENERATOR}" "-DCMAKE_CXX_COMPILER=${FTM_CXX_COMPILER}")
      if(FTM_MAKE_PROGRAM)
        list(APPEND command "-DCMAKE_MAKE_PROGRAM=${FTM_MAKE_PROGRAM}")
      endif()
    endif()
    message(STATUS "README.md: ${line}")
    execute_process(COMMAND ${command} WORKING_DIRECTORY "${FTM_SOURCE_DIR}"
                    RESULT_VARIABLE result)
    if(NOT result EQUAL 0)
      message(FATAL_ERROR "consumer test (install): README.md's '${line}' failed (${result})")
    endif()
    math(EXPR ran "${ran} + 1")
  endforeach()
  if(ran LESS 2)
    message(FATAL_ERROR "README.md's shell block ran only ${ran} commands")
  endif()
  readme_block(snippet cmake "find_package(ftm")
  list(APPEND consumer_args "-DCMAKE_PREFIX_PATH=${prefix}" "-DFTM_EXPECTED_PREFIX=${prefix}"
       # Only the scratch prefix may provide ftm.
       -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF -DCMAKE_FIND_PACKAGE_NO_PACKAGE_REGISTRY=ON)
elseif(FTM_MODE STREQUAL "nats")
  set(prefix "${FTM_INSTALLED_PREFIX}")
  if(NOT EXISTS "${prefix}/share/cmake/ftm/ftmConfig.cmake")
    message(FATAL_ERROR "consumer test (nats): no ftm installed in '${prefix}' "
                        "(FTM_INSTALLED_PREFIX; the install mode makes it)")
  endif()
  readme_block(snippet cmake "COMPONENTS nats")
  if(NOT snippet MATCHES "ftm::nats")
    message(FATAL_ERROR "docs/nats.md's block with 'COMPONENTS nats' does not link ftm::nats")
  endif()
  list(APPEND consumer_args "-DCMAKE_PREFIX_PATH=${prefix}" "-DFTM_EXPECTED_PREFIX=${prefix}"
       -DFTM_EXPECT_NATS=ON
       -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF -DCMAKE_FIND_PACKAGE_NO_PACKAGE_REGISTRY=ON)
elseif(FTM_MODE STREQUAL "fetchcontent")
  readme_block(snippet cmake "FetchContent_Declare(ftm")
  # A git repository of the source tree as it is (with uncommitted changes), its
  # branch `main`.
  if(NOT git)
    message(FATAL_ERROR "consumer test (fetchcontent): git is not installed")
  endif()
  set(repo "${FTM_WORK_DIR}/ftm.git")
  copy_source("${repo}")
  step("git init" "${git}" -C "${repo}" init -q -b main)
  step("git add" "${git}" -C "${repo}" add -A)
  step("git commit" "${git}" -C "${repo}" -c user.name=ftm-test -c user.email=ftm-test@localhost
       commit -q -m "the source tree under test")
  string(REGEX REPLACE "GIT_REPOSITORY[ \t]+[^ \t\n]+" "GIT_REPOSITORY file://${repo}" snippet
         "${snippet}")
  string(FIND "${snippet}" "file://${repo}" replaced)
  if(replaced EQUAL -1)
    message(FATAL_ERROR "README.md's FetchContent block names no GIT_REPOSITORY")
  endif()
  if(NOT snippet MATCHES "GIT_TAG")
    message(FATAL_ERROR "README.md's FetchContent block names no GIT_TAG")
  endif()
  list(APPEND consumer_args -DFTM_EXPECT_NO_TOOLS=ON)
else()
  readme_block(snippet cmake "add_subdirectory(")
  if(NOT snippet MATCHES "add_subdirectory\\(ftm\\)")
    message(FATAL_ERROR "README.md's add_subdirectory block does not read add_subdirectory(ftm)")
  endif()
  copy_source("${project}/ftm")
  list(APPEND consumer_args -DFTM_EXPECT_NO_TOOLS=ON)
endif()

message(STATUS "${section_name}'s CMake block:\n${snippet}")
file(WRITE "${project}/readme_snippet.cmake" "${snippet}")

set(configure "${CMAKE_COMMAND}"
  -S "${project}" -B "${consumer_build}"
  -G "${FTM_GENERATOR}"
  "-DCMAKE_CXX_COMPILER=${FTM_CXX_COMPILER}"
  "-DCMAKE_BUILD_TYPE=${FTM_CONFIG}"
  ${consumer_args})
if(FTM_MAKE_PROGRAM)
  list(APPEND configure "-DCMAKE_MAKE_PROGRAM=${FTM_MAKE_PROGRAM}")
endif()
step("configuring the consumer" ${configure})
step("building the consumer" "${CMAKE_COMMAND}" --build "${consumer_build}" --config "${FTM_CONFIG}")

set(app "${consumer_build}/app")
if(NOT EXISTS "${app}")
  set(app "${consumer_build}/${FTM_CONFIG}/app")  # multi-config generators
endif()
execute_process(COMMAND "${app}" RESULT_VARIABLE result OUTPUT_VARIABLE out)
message(STATUS "the consumer printed: ${out}")
if(NOT result EQUAL 0 OR NOT out MATCHES "ftm consumer: ok")
  message(FATAL_ERROR "consumer test (${FTM_MODE}): the program failed (${result})")
endif()
message(STATUS "consumer test (${FTM_MODE}): the documented commands built and ran a program")
