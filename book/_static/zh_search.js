/*
 * 搜索页的中文查询分词。
 *
 * 构建时 Sphinx 用 jieba 把中文正文切成词，searchindex.js 里只存这些词。
 * Sphinx 默认的 splitQuery 只按空格和标点切分，“全量微调怎么做”会整个当成一个词，
 * 在索引里找不到，于是没有结果。这里把每段连续的汉字按索引里实际存在的词做正向最大匹配，
 * 匹配不上的单字丢掉，用查询和页面共有的词去搜索。
 *
 * searchtools.js 只在 splitQuery 未定义时才定义默认版本，所以本文件必须先于它加载
 * （search.html 里 html_js_files 排在 searchtools.js 前面）。
 */
"use strict";

const ZH_SEARCH_MAX_WORD_LENGTH = 8;

function zhSearchIsKnownWord(index, word) {
  const has = Object.prototype.hasOwnProperty;
  return has.call(index.terms, word) || has.call(index.titleterms, word);
}

function zhSearchSegmentHan(index, run) {
  const words = [];
  let start = 0;
  while (start < run.length) {
    let matched = 0;
    const longest = Math.min(ZH_SEARCH_MAX_WORD_LENGTH, run.length - start);
    for (let length = longest; length >= 2; length--) {
      if (zhSearchIsKnownWord(index, run.slice(start, start + length))) {
        matched = length;
        break;
      }
    }
    if (matched) {
      words.push(run.slice(start, start + matched));
      start += matched;
    } else {
      start += 1; // 单字不会出现在索引里：Sphinx 的中文索引只保留两个字及以上的词
    }
  }
  return words;
}

var splitQuery = (query) => {
  const pieces = query
    .split(/[^\p{Letter}\p{Number}_\p{Emoji_Presentation}]+/gu)
    .filter((piece) => piece);
  const index = typeof Search !== "undefined" ? Search._index : null;
  if (!index) return pieces;

  const terms = [];
  for (const piece of pieces) {
    for (const run of piece.match(/\p{Script=Han}+|[^\p{Script=Han}]+/gu)) {
      if (!/\p{Script=Han}/u.test(run)) {
        terms.push(run);
        continue;
      }
      const words = zhSearchSegmentHan(index, run);
      // 一个词都匹配不上时保留原文，搜索页照常显示“没有结果”
      terms.push(...(words.length ? words : [run]));
    }
  }
  return terms;
};
